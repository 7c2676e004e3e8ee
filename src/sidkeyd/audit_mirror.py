"""The audit trail's copy on stdout when it also has a file (``path`` and ``stdout = true``).

The file is the trail: it builds each record (``seq``, ``chain``) and is written first, whole
or not at all. The same bytes then go to the shared stdout outlet, in the file's order: a copy
is never withdrawn once queued, so stdout carries the file's records, interleaved with the
operational log. An answer waits for both (and for the file's ``fdatasync`` with
``fsync = "always"``); a record stdout refuses or is late with is voided by the caller.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from sidkeyd.outlet import Line, LineOutlet, WriteFailed


class StdoutMirror:
    def __init__(self, outlet: LineOutlet) -> None:
        self.outlet = outlet

    @property
    def backlogged(self) -> bool:
        return self.outlet.backlogged

    def problem(self) -> str | None:
        if self.outlet.failure is not None:
            return f"stdout:{self.outlet.failure}"
        if self.outlet.backlogged:
            return "stdout:sink_blocked"
        return None

    def copy(self, data: bytes) -> Line | None:
        """``data`` written (None) or queued (a ``Line`` to await); ``WriteFailed`` if refused."""
        try:
            if self.outlet.backlogged:
                return self.outlet.commit(lambda: data)
            return self.outlet.write(data)
        except WriteFailed as exc:
            raise WriteFailed(f"stdout:{exc.reason}") from None

    def joined(
        self, data: bytes, copy: Line, synced: Line | None, void: Callable[[Line], None]
    ) -> Line:
        """One ``Line`` done when the stdout ``copy`` and the file's ``synced`` (if any) are.

        A copy that fails voids the record (it is in the file); a failing sync voids it
        itself. Once the joined line fails or is cancelled (its answer timed out, voided), the
        parts are cancelled, so neither voids it again; a cancelled copy is still written.
        """
        joined = Line(data, done=asyncio.get_running_loop().create_future())
        parts = [part for part in (copy, synced) if part is not None]
        assert joined.done is not None

        def settled(future: asyncio.Future[None]) -> None:
            assert joined.done is not None
            if joined.done.done() or future.cancelled():
                return
            error = future.exception()
            if error is not None:
                if future is copy.done:
                    void(joined)
                    error = WriteFailed(f"stdout:{getattr(error, 'reason', 'EIO')}")
                joined.done.set_exception(error)
                for part in parts:  # now, not a loop turn later: the other must not void it
                    if part.done is not None:
                        part.done.cancel()
            elif all(p.done is not None and p.done.done() for p in parts):
                joined.done.set_result(None)

        def finished(future: asyncio.Future[None]) -> None:
            if future.cancelled() or future.exception() is not None:
                for part in parts:
                    if part.done is not None:
                        part.done.cancel()

        for part in parts:
            assert part.done is not None
            part.done.add_done_callback(settled)
        joined.done.add_done_callback(finished)
        return joined
