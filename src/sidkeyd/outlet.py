"""Whole lines to a file descriptor, never blocking the event loop, never fused.

A pipe or socket is switched to non-blocking; a line the kernel takes only in part waits at
the head of a queue and is finished first (``add_writer``), so the next line never joins a
stub. A regular file cannot block, but it can fill: a line cut short by ``ENOSPC`` is
truncated away, so the file holds whole lines only.

Two kinds of line share one queue, in order: the operational log's ``offer`` (dropped and
counted when the descriptor is broken or the queue is full) and the audit trail's ``commit``
(written, or a ``WriteFailed`` for the caller to refuse on; a line that must wait gets a
future). An audit line is built (``Line.build``) only when it is first written, so a line
withdrawn before any of it left is gone without a trace.
"""

from __future__ import annotations

import asyncio
import errno
import os
import stat
from collections import deque
from collections.abc import Callable

DEFAULT_MAX_QUEUED_LINES = 4096


class WriteFailed(Exception):
    """A line could not be written: ``reason`` is a code such as ``ENOSPC`` or ``EPIPE``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Line:
    """One line in the queue; ``build`` makes its bytes when it is first written."""

    __slots__ = ("build", "data", "done", "failed", "sent")

    def __init__(
        self,
        data: bytes | None,
        build: Callable[[], bytes] | None = None,
        done: asyncio.Future[None] | None = None,
        failed: Callable[[], None] | None = None,
    ) -> None:
        self.data = data
        self.build = build
        self.done = done
        self.failed = failed  # called when its built bytes are taken back: none remain written
        self.sent = 0

    def bytes(self) -> bytes:
        if self.data is None:
            assert self.build is not None
            self.data = self.build()
        return self.data


def _reason(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, type(exc).__name__)


class LineOutlet:
    def __init__(self, fd: int, *, max_queued_lines: int = DEFAULT_MAX_QUEUED_LINES) -> None:
        self.fd = fd
        self.regular = stat.S_ISREG(os.fstat(fd).st_mode)
        if not self.regular:
            os.set_blocking(fd, False)
        self._max_queued = max_queued_lines
        self._queue: deque[Line] = deque()
        self._watching: asyncio.AbstractEventLoop | None = None
        self.failure: str | None = None  # why the last write failed; None once one works
        self.dropped = 0  # operational lines dropped
        self.written = 0  # bytes written, for fsync

    @property
    def backlogged(self) -> bool:
        return bool(self._queue)

    def offer(self, data: bytes) -> bool:
        """Write or queue a droppable line; False when it was dropped."""
        if self._queue:
            if len(self._queue) >= self._max_queued:
                self.dropped += 1
                return False
            self._enqueue(Line(data))
            return True
        try:
            if not self._write_now(Line(data)):
                return True
        except WriteFailed:
            self.dropped += 1
            return False
        return True

    def commit(
        self, build: Callable[[], bytes], failed: Callable[[], None] | None = None
    ) -> Line | None:
        """Write a line that must not be lost: None when written, else the queued ``Line``
        (await ``line.done``); ``WriteFailed`` when it cannot be written or queued."""
        if self._queue:
            if len(self._queue) >= self._max_queued:
                raise WriteFailed("backlog_full")
            line = self._waiting_line(build, failed)
            self._enqueue(line)
            return line
        line = Line(None, build, failed=failed)
        if not self._write_now(line):
            return None
        line.done = asyncio.get_running_loop().create_future()
        return line

    def write(self, data: bytes, failed: Callable[[], None] | None = None) -> Line | None:
        """``commit`` of bytes already built, when nothing is queued (the hot path)."""
        try:
            sent = os.write(self.fd, data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self.failure = _reason(exc)
            if failed is not None:
                failed()  # built, and none of it written
            raise WriteFailed(self.failure) from None
        self.written += sent
        if sent == len(data):
            self.failure = None
            return None
        line = Line(data, failed=failed)
        line.sent = sent
        if not self._write_now(line):
            return None
        line.done = asyncio.get_running_loop().create_future()
        return line

    def withdraw(self, line: Line) -> bool:
        """Take back a queued line: True if it was never built (so none of it will be written)."""
        if line.data is not None or line not in self._queue:
            return False
        self._queue.remove(line)
        return True

    def _waiting_line(self, build: Callable[[], bytes], failed: Callable[[], None] | None) -> Line:
        return Line(None, build, asyncio.get_running_loop().create_future(), failed)

    def _write_now(self, line: Line) -> bool:
        """Write ``line``; True if some of it is left, queued at the head."""
        data = line.bytes()
        while True:
            try:
                sent = os.write(self.fd, memoryview(data)[line.sent :])
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                self._undo_partial(line)
                self.failure = _reason(exc)
                raise WriteFailed(self.failure) from None
            line.sent += sent
            self.written += sent
            if line.sent == len(data):
                self.failure = None
                return False
            if not self.regular:
                self._queue.appendleft(line)
                self._watch()
                return True
            # A regular file took part of it (the disk filled): the rest raises or goes in.

    def _undo_partial(self, line: Line) -> None:
        """The line could not be finished: take back what of it was written, if we can."""
        if not line.sent:
            if line.failed is not None:
                line.failed()
            return
        if self.regular:
            # O_APPEND: our line is the file's tail. Cut it off so no stub is left.
            try:
                os.ftruncate(self.fd, os.fstat(self.fd).st_size - line.sent)
            except OSError:
                return
            self.written -= line.sent
            line.sent = 0
            if line.failed is not None:
                line.failed()

    def _enqueue(self, line: Line) -> None:
        self._queue.append(line)
        self._watch()

    def _watch(self) -> None:
        if self._watching is not None or self.regular:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop yet: the next offer drains
        loop.add_writer(self.fd, self.drain)
        self._watching = loop

    def drain(self) -> None:
        """Write queued lines until the descriptor would block."""
        while self._queue:
            line = self._queue[0]
            try:
                data = line.bytes()
                sent = os.write(self.fd, memoryview(data)[line.sent :])
            except BlockingIOError:
                return
            except OSError as exc:
                self.failure = _reason(exc)
                if not line.sent and line.data is not None and line.failed is not None:
                    line.failed()  # built, and none of it out: as if never built
                self._fail_all()
                return
            line.sent += sent
            self.written += sent
            if line.sent < len(data):
                return
            self._queue.popleft()
            self.failure = None
            if line.done is not None and not line.done.done():
                line.done.set_result(None)
        self._unwatch()

    def _fail_all(self) -> None:
        while self._queue:
            line = self._queue.popleft()
            if line.done is not None and not line.done.done():
                line.done.set_exception(WriteFailed(self.failure or "EIO"))
            elif line.done is None:
                self.dropped += 1
        self._unwatch()

    def _unwatch(self) -> None:
        if self._watching is not None:
            self._watching.remove_writer(self.fd)
            self._watching = None

    def close(self) -> None:
        self._unwatch()
        self._fail_all()
