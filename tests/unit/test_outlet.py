"""LineOutlet: whole lines to a pipe that may be full or closed, without blocking the loop."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import Iterator

import pytest

from sidkeyd.outlet import LineOutlet, WriteFailed

F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
PAGE = os.sysconf("SC_PAGE_SIZE")


@pytest.fixture
def small_pipe() -> Iterator[tuple[int, int]]:
    """A pipe that holds one page: (read end, write end)."""
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, F_SETPIPE_SZ, PAGE)
    yield read_end, write_end
    for fd in (read_end, write_end):
        with contextlib.suppress(OSError):
            os.close(fd)


def drain(fd: int) -> bytes:
    os.set_blocking(fd, False)
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def test_a_line_the_pipe_takes_in_part_is_finished_before_the_next() -> None:
    """A short write leaves the rest queued; the next line follows it whole, never fused."""
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, F_SETPIPE_SZ, PAGE)
    big = b"a" * (PAGE + 100) + b"\n"

    async def scenario() -> bytes:
        outlet = LineOutlet(write_end)
        first = outlet.commit(lambda: big)
        assert first is not None
        assert first.done is not None
        second = outlet.commit(lambda: b"second\n")
        assert second is not None
        assert second.done is not None
        received = b""
        while not second.done.done():
            await asyncio.sleep(0)
            received += drain(read_end)
        return received + drain(read_end)

    try:
        assert big + b"second\n" == asyncio.run(scenario())
    finally:
        os.close(read_end)
        os.close(write_end)


def test_a_closed_pipe_fails_a_commit_with_its_reason(small_pipe: tuple[int, int]) -> None:
    """EPIPE: the caller gets WriteFailed("EPIPE") at once, nothing waits."""
    read_end, write_end = small_pipe
    os.close(read_end)
    outlet = LineOutlet(write_end)
    with pytest.raises(WriteFailed) as caught:
        outlet.commit(lambda: b"record\n")
    assert ("EPIPE", "EPIPE") == (caught.value.reason, outlet.failure)


def test_operational_lines_are_dropped_and_counted_when_the_pipe_is_full(
    small_pipe: tuple[int, int],
) -> None:
    """offer never blocks: past the queue's bound a line is dropped and counted."""
    _read_end, write_end = small_pipe
    outlet = LineOutlet(write_end, max_queued_lines=3)
    line = b"x" * 200 + b"\n"
    offered = [outlet.offer(line) for _ in range(PAGE // len(line) + 10)]
    assert (False, outlet.dropped) == (offered[-1], offered.count(False))
    assert outlet.dropped > 0


def test_a_line_never_built_can_be_withdrawn(small_pipe: tuple[int, int]) -> None:
    """A queued line whose bytes were never made leaves no trace when withdrawn."""
    read_end, write_end = small_pipe
    built: list[str] = []

    def late() -> bytes:
        built.append("late")
        return b"late\n"

    async def scenario() -> bool:
        outlet = LineOutlet(write_end)
        outlet.commit(lambda: b"y" * (PAGE + 1) + b"\n")  # fills the pipe, rest queued
        queued = outlet.commit(late)
        assert queued is not None
        return outlet.withdraw(queued)

    assert (True, []) == (asyncio.run(scenario()), built)
    assert b"late" not in drain(read_end)
