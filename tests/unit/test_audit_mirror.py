"""AuditTrail with a file and stdout at once: one trail, the same records in both, an answer
released only when both have its record, a record one of them lacks voided in the file."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import resource
import signal
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from sidkeyd.audit import AuditTrail, AuditUnavailable
from sidkeyd.audit_verify import verify
from sidkeyd.config import AuditConfig, FsyncMode
from sidkeyd.outlet import LineOutlet
from sidkeyd.peer import Peer

PEER = Peer(pid=os.getpid(), uid=os.getuid(), gid=os.getgid(), exe="/usr/bin/python3")
TIMESTAMP = "2026-12-01T10:00:00.000Z"


def records(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def both_at(
    path: Path, stdout: LineOutlet, *, fsync: FsyncMode = "never", timeout_ms: int = 500
) -> AuditTrail:
    config = AuditConfig(
        path=path, stdout=True, fsync=fsync, write_timeout=timedelta(milliseconds=timeout_ms)
    )
    return AuditTrail(config, lambda: (), stdout=stdout)


def read_available(read_end: int) -> bytes:
    os.set_blocking(read_end, False)
    received = b""
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(read_end, 65536):
            received += chunk
    return received


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    """A one-page pipe: (read end, write end), closed afterwards."""
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, getattr(fcntl, "F_SETPIPE_SZ", 1031), os.sysconf("SC_PAGE_SIZE"))
    yield read_end, write_end
    for fd in (read_end, write_end):
        with contextlib.suppress(OSError):
            os.close(fd)


def closed_pipe() -> int:
    """A pipe's write end whose reader is gone (EPIPE); the caller closes it."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    return write_end


def fill(write_end: int) -> None:
    os.set_blocking(write_end, False)
    with contextlib.suppress(BlockingIOError):
        while True:
            os.write(write_end, b"\n" * 512)


def test_each_record_is_written_whole_to_the_file_and_to_stdout(
    tmp_path: Path, pipe: tuple[int, int]
) -> None:
    """The same bytes, in the same order, one seq and chain: stdout is the file's copy."""
    read_end, write_end = pipe
    path = tmp_path / "audit.jsonl"
    trail = both_at(path, LineOutlet(write_end))
    for n in range(3):
        assert None is trail.signature_issued("sandbox", "v1", f"2026-12-01T10:00:0{n}.000Z", PEER)
    assert path.read_bytes() == read_available(read_end)
    assert [1, 2, 3] == [r["seq"] for r in records(path)]


def test_a_restart_continues_the_files_chain_on_stdout_too(
    tmp_path: Path, pipe: tuple[int, int]
) -> None:
    """stdout carries the file's seq, continued from its last record, not 1 per run."""
    read_end, write_end = pipe
    path = tmp_path / "audit.jsonl"
    AuditTrail(AuditConfig(path=path, fsync="never"), lambda: ()).signature_issued(
        "sandbox", "v1", TIMESTAMP, PEER
    )
    trail = both_at(path, LineOutlet(write_end))
    assert None is trail.signature_issued("sandbox", "v1", TIMESTAMP, PEER)
    assert [2] == [json.loads(line)["seq"] for line in read_available(read_end).splitlines()]
    assert verify([path]).ok


def test_a_reopen_moves_the_file_only_and_stdout_goes_on_with_the_chain(
    tmp_path: Path, pipe: tuple[int, int]
) -> None:
    """SIGHUP after logrotate: a new file, chained to the old one's last record; stdout (not
    reopened) carries the old file's records, then the new one's, in one sequence."""
    read_end, write_end = pipe
    path = tmp_path / "audit.jsonl"
    trail = both_at(path, LineOutlet(write_end))
    assert None is trail.signature_issued("sandbox", "v1", TIMESTAMP, PEER)
    path.rename(tmp_path / "audit.jsonl.1")
    trail.reopen()
    assert None is trail.signature_issued("sandbox", "v1", TIMESTAMP, PEER)
    rotated = [tmp_path / "audit.jsonl.1", path]
    assert b"".join(p.read_bytes() for p in rotated) == read_available(read_end)
    assert ["audit.reopened", "signature.issued"] == [r["event"] for r in records(path)]
    assert verify(rotated).ok


def test_a_closed_stdout_refuses_the_answer_and_voids_the_record_in_the_file(
    tmp_path: Path,
) -> None:
    """EPIPE on stdout: 503, the file's record is followed by audit.voided naming it, the
    file still verifies, and health names stdout."""
    write_end = closed_pipe()
    path = tmp_path / "audit.jsonl"
    trail = both_at(path, LineOutlet(write_end))
    with pytest.raises(AuditUnavailable) as caught:  # Python ignores SIGPIPE: EPIPE
        trail.signature_issued("sandbox", "v1", TIMESTAMP, PEER)
    issued, voided = records(path)
    assert ("signature.issued", "audit.voided", issued["seq"]) == (
        issued["event"],
        voided["event"],
        voided["voided_seq"],
    )
    assert (503, "stdout:EPIPE") == (caught.value.status, trail.problem())
    assert verify([path]).ok
    os.close(write_end)


def test_on_failure_continue_serves_with_the_record_in_the_file_only(
    tmp_path: Path,
) -> None:
    """ "continue" and a closed stdout: the answer goes out (nothing to wait for), the file
    has the record and no audit.voided, and the stdout loss is counted by its sink."""
    write_end = closed_pipe()
    path = tmp_path / "audit.jsonl"
    config = AuditConfig(path=path, stdout=True, fsync="never", on_audit_failure="continue")
    lost: list[str] = []
    trail = AuditTrail(config, lambda: (), stdout=LineOutlet(write_end), counted=lost.append)
    assert None is trail.signature_issued("sandbox", "v1", TIMESTAMP, PEER)
    assert (["signature.issued"], ["stdout:EPIPE"]) == ([r["event"] for r in records(path)], lost)
    os.close(write_end)


def test_a_stdout_nobody_reads_refuses_after_the_write_timeout_and_voids_in_both(
    tmp_path: Path, pipe: tuple[int, int]
) -> None:
    """The file took the record, stdout queued it: at the timeout the answer is refused and
    audit.voided follows; once stdout drains it has both records, the file's bytes exactly."""
    read_end, write_end = pipe
    fill(write_end)
    path = tmp_path / "audit.jsonl"

    async def scenario() -> bytes:
        outlet = LineOutlet(write_end)
        trail = both_at(path, outlet, timeout_ms=50)
        line = trail.signature_issued("sandbox", "v1", TIMESTAMP, PEER)
        assert line is not None
        with pytest.raises(AuditUnavailable) as caught:
            await trail.released(line, "answer")
        assert "stdout:sink_blocked" == trail.problem()
        assert "(stdout:sink_blocked)" in caught.value.message
        received = read_available(read_end)
        while outlet.backlogged:
            await asyncio.sleep(0)
            received += read_available(read_end)
        assert None is trail.problem()
        return received

    stdout = asyncio.run(scenario()).lstrip(b"\n")
    issued, voided = records(path)
    assert ("signature.issued", issued["seq"]) == (issued["event"], voided["voided_seq"])
    assert path.read_bytes() == stdout
    assert verify([path]).ok


def test_a_stdout_closed_while_its_copy_waits_refuses_and_voids_once_in_the_file(
    tmp_path: Path,
) -> None:
    """Queued behind a full pipe, then the reader goes (EPIPE): the answer is refused with
    the stdout reason and the file's record is followed by exactly one audit.voided."""
    read_end, write_end = os.pipe()  # its own: the test closes the read end
    fill(write_end)
    path = tmp_path / "audit.jsonl"

    async def scenario() -> str:
        trail = both_at(path, LineOutlet(write_end), timeout_ms=5000)
        line = trail.signature_issued("sandbox", "v1", TIMESTAMP, PEER)
        assert line is not None
        os.close(read_end)
        with pytest.raises(AuditUnavailable) as caught:
            await trail.released(line, "answer")
        return caught.value.message

    assert "(stdout:EPIPE)" in asyncio.run(scenario())
    os.close(write_end)
    issued, voided = records(path)
    assert ("signature.issued", "audit.voided", issued["seq"]) == (
        issued["event"],
        voided["event"],
        voided["voided_seq"],
    )
    assert verify([path]).ok


def test_a_record_the_file_refuses_never_reaches_stdout(
    tmp_path: Path, pipe: tuple[int, int]
) -> None:
    """The file first: a record it cannot take is refused (health names the file) and no
    copy of it is on stdout, so stdout never has a record the file lacks."""
    read_end, write_end = pipe
    path = tmp_path / "audit.jsonl"
    trail = both_at(path, LineOutlet(write_end))
    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    previous = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, previous[1]))
    try:
        with pytest.raises(AuditUnavailable):
            trail.signature_issued("sandbox", "v1", TIMESTAMP, PEER)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, previous)
        signal.signal(signal.SIGXFSZ, previous_handler)
    assert ("file:EFBIG", b"") == (trail.problem(), read_available(read_end))


def test_fsync_always_releases_the_answer_only_once_synced_and_on_stdout(
    tmp_path: Path, pipe: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both waits in one: the record reaches stdout (the pipe read) while its fdatasync is
    held; the answer waits until the fdatasync finishes too."""
    read_end, write_end = pipe
    fill(write_end)
    path = tmp_path / "audit.jsonl"
    synced = threading.Event()
    real_fdatasync = os.fdatasync

    def held_fdatasync(fd: int) -> None:
        synced.wait(10)
        real_fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", held_fdatasync)

    async def scenario() -> str:
        outlet = LineOutlet(write_end)
        trail = both_at(path, outlet, fsync="always", timeout_ms=5000)
        line = trail.signature_issued("sandbox", "v1", TIMESTAMP, PEER)
        assert line is not None
        answer = asyncio.ensure_future(trail.released(line, "answer"))
        received = read_available(read_end)
        while outlet.backlogged:
            await asyncio.sleep(0)
            received += read_available(read_end)
        assert b"signature.issued" in received
        assert not answer.done()
        synced.set()
        return await answer

    assert "answer" == asyncio.run(scenario())
