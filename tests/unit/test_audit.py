"""AuditTrail: records chained across restarts and reopenings, fail closed, keys kept out."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import resource
import signal
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from sidkeyd.audit import GENESIS, AuditedRejections, AuditTrail, AuditUnavailable, chain_of
from sidkeyd.audit_verify import verify
from sidkeyd.config import AuditConfig
from sidkeyd.errors import ConfigProblem
from sidkeyd.log import get_logger
from sidkeyd.outlet import LineOutlet
from sidkeyd.peer import Peer
from sidkeyd.rejections import RejectionLog
from sidkeyd.reload_plan import ReloadOutcome, ReloadPlan

KEY = "audit-unit-key-0123456789abcdef"
PEER = Peer(pid=os.getpid(), uid=os.getuid(), gid=os.getgid(), exe="/usr/bin/python3")


def records(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def trail_at(path: Path) -> AuditTrail:
    return AuditTrail(AuditConfig(path=path, fsync="never"), lambda: (KEY,))


def sign(trail: AuditTrail, timestamp: str = "2026-12-01T10:00:00.000Z") -> None:
    assert trail.signature_issued("sandbox", "v1", timestamp, PEER) is None


def test_each_record_chains_to_the_one_before(tmp_path: Path) -> None:
    """chain = sha256(previous chain + the record up to its chain field), from the genesis."""
    path = tmp_path / "audit.jsonl"
    trail = trail_at(path)
    sign(trail)
    sign(trail)
    previous = GENESIS
    for line in path.read_bytes().splitlines():
        body, _, rest = line.rpartition(b',"chain":"')
        assert chain_of(previous, body) == rest[:64].decode()
        previous = rest[:64].decode()
    assert [1, 2] == [r["seq"] for r in records(path)]


def test_a_restart_continues_the_chain_of_the_files_last_record(tmp_path: Path) -> None:
    """A new trail on the same file takes its seq and chain from the last record."""
    path = tmp_path / "audit.jsonl"
    sign(trail_at(path))
    sign(trail_at(path))
    first, second = records(path)
    assert (2, first["chain"]) == (second["seq"], _previous_chain(path, 1))


def test_a_reopen_after_logrotate_continues_the_chain_in_the_new_file(tmp_path: Path) -> None:
    """The file moved away and reopened: the new file's first record follows the old last."""
    path = tmp_path / "audit.jsonl"
    trail = trail_at(path)
    sign(trail)
    path.rename(tmp_path / "audit.jsonl.1")
    trail.reopen()
    [old] = records(tmp_path / "audit.jsonl.1")
    [reopened] = records(path)
    assert ("audit.reopened", 2) == (reopened["event"], reopened["seq"])
    body = path.read_bytes().rpartition(b',"chain":"')[0]
    assert chain_of(str(old["chain"]), body) == reopened["chain"]


def test_a_reopen_onto_a_fifo_is_refused_at_once_and_keeps_the_old_file(tmp_path: Path) -> None:
    """A FIFO put at the path: opening it would wait for a reader (on the event loop); the
    reopen fails without blocking and records keep going to the file already open."""
    path = tmp_path / "audit.jsonl"
    trail = trail_at(path)
    path.rename(tmp_path / "audit.jsonl.1")
    os.mkfifo(path)
    done = threading.Event()

    def reopen() -> None:
        trail.reopen()
        done.set()

    threading.Thread(target=reopen, daemon=True).start()
    assert done.wait(10), "reopen blocked on the FIFO"
    sign(trail)
    assert ["signature.issued"] == [r["event"] for r in records(tmp_path / "audit.jsonl.1")]


def test_a_symlink_at_the_path_is_refused_and_its_target_left_alone(tmp_path: Path) -> None:
    """A symlink swapped in at the path is not followed: no record is appended to its target."""
    target = tmp_path / "elsewhere.toml"
    target.write_text("untouched\n")
    path = tmp_path / "audit.jsonl"
    path.symlink_to(target)
    with pytest.raises(OSError, match="symbolic links"):
        trail_at(path)
    assert "untouched\n" == target.read_text()


def test_the_file_is_created_private(tmp_path: Path) -> None:
    """0600: the trail names peers and key versions; it is no one else's to read."""
    path = tmp_path / "audit.jsonl"
    trail_at(path)
    assert 0o600 == path.stat().st_mode & 0o777


def test_a_key_sent_as_a_verify_timestamp_is_redacted(tmp_path: Path) -> None:
    """Untrusted fields are scrubbed of every held key before they are recorded."""
    path = tmp_path / "audit.jsonl"
    trail = trail_at(path)
    assert trail.signature_verified("sandbox", "v1", False, f"x{KEY}y", PEER) is None
    assert KEY not in path.read_text()
    assert "x[REDACTED]y" == records(path)[0]["signed_timestamp"]


def test_the_record_names_who_what_when_and_origin(tmp_path: Path) -> None:
    """PCI DSS 10.2.2: uid, user, pid, executable, event, result, UTC time, origin."""
    path = tmp_path / "audit.jsonl"
    sign(trail_at(path))
    [record] = records(path)
    assert {
        "seq", "time", "event", "result", "environment", "key_version", "signed_timestamp",
        "peer_uid", "peer_user", "peer_gid", "peer_pid", "peer_exe", "peer_exe_verified",
        "peer_unit", "peer_cgroup", "host", "daemon_pid", "origin", "chain",
    } == set(record)  # fmt: skip
    assert (PEER.uid, PEER.pid, "/usr/bin/python3") == (
        record["peer_uid"],
        record["peer_pid"],
        record["peer_exe"],
    )
    assert str(record["time"]).endswith("Z")
    assert 27 == len(str(record["time"]))


def _previous_chain(path: Path, index: int) -> str:
    lines = path.read_bytes().splitlines()
    body = lines[index].rpartition(b',"chain":"')[0]
    first = json.loads(lines[index - 1])
    assert chain_of(first["chain"], body) == json.loads(lines[index])["chain"]
    return str(first["chain"])


@pytest.fixture
def full_pipe() -> tuple[int, int]:
    """A one-page pipe, filled: (read end, write end)."""
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, getattr(fcntl, "F_SETPIPE_SZ", 1031), os.sysconf("SC_PAGE_SIZE"))
    os.set_blocking(write_end, False)
    try:
        while True:
            os.write(write_end, b"\n" * 512)
    except BlockingIOError:
        pass
    return read_end, write_end


def test_a_closed_sink_refuses_the_answer() -> None:
    """EPIPE: the record cannot be written, so the signature is refused (503)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    trail = AuditTrail(AuditConfig(stdout=True), lambda: (), stdout=LineOutlet(write_end))
    with pytest.raises(AuditUnavailable) as caught:
        sign(trail)
    assert (503, "audit_unavailable", "EPIPE") == (
        caught.value.status,
        caught.value.code,
        trail.problem(),
    )


def test_on_failure_continue_serves_without_the_record() -> None:
    """on_audit_failure = "continue": the answer goes out; the lost record is counted."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    config = AuditConfig(stdout=True, on_audit_failure="continue")
    trail = AuditTrail(config, lambda: (), stdout=LineOutlet(write_end))
    sign(trail)
    assert 1 == trail.failures


def test_a_blocked_sink_refuses_after_the_write_timeout_and_leaves_no_record(
    full_pipe: tuple[int, int],
) -> None:
    """A record still queued at the timeout is withdrawn: 503 and no line, ever."""
    read_end, write_end = full_pipe
    config = AuditConfig(stdout=True, write_timeout=timedelta(milliseconds=50))

    async def scenario() -> None:
        outlet = LineOutlet(write_end)
        trail = AuditTrail(config, lambda: (), stdout=outlet)
        outlet.commit(lambda: b"z" * 10 + b"\n")  # something ahead of it, waiting
        line = trail.signature_issued("sandbox", "v1", "2026-12-01T10:00:00.000Z", PEER)
        assert line is not None
        with pytest.raises(AuditUnavailable):
            await trail.released(line, "answer")
        assert "sink_blocked" == trail.problem()
        os.set_blocking(read_end, False)
        while outlet.backlogged:
            with contextlib.suppress(BlockingIOError):
                os.read(read_end, 65536)
            await asyncio.sleep(0)
        assert None is trail.problem()

    asyncio.run(scenario())
    os.set_blocking(read_end, False)
    try:
        rest = os.read(read_end, 65536)
    except BlockingIOError:
        rest = b""
    assert b"signature.issued" not in rest
    os.close(read_end)
    os.close(write_end)


def test_fsync_always_releases_each_answer_after_a_shared_fdatasync(tmp_path: Path) -> None:
    """Group commit: records written in one loop turn wait for one fdatasync, then go."""
    path = tmp_path / "audit.jsonl"
    trail = AuditTrail(AuditConfig(path=path, fsync="always"), lambda: ())

    async def scenario() -> list[str]:
        lines = [
            trail.signature_issued("sandbox", "v1", f"2026-12-01T10:00:0{n}.000Z", PEER)
            for n in range(3)
        ]
        waiting = [line for line in lines if line is not None]
        assert 3 == len(waiting)
        return list(await asyncio.gather(*(trail.released(line, "ok") for line in waiting)))

    assert ["ok", "ok", "ok"] == asyncio.run(scenario())
    assert 3 == len(records(path))


def test_a_key_inside_a_peers_executable_path_is_redacted(tmp_path: Path) -> None:
    """The peer's fields (from /proc, the peer's to choose) are scrubbed like any untrusted
    text, once per peer, so the hot path keeps the guarantee without scrubbing per record."""
    path = tmp_path / "audit.jsonl"
    trail = trail_at(path)
    odd = Peer(pid=os.getpid(), uid=os.getuid(), gid=os.getgid(), exe=f"/tmp/{KEY}/node")
    assert trail.signature_issued("sandbox", "v1", "2026-12-01T10:00:00.000Z", odd) is None
    assert KEY not in path.read_text()
    assert "/tmp/[REDACTED]/node" == records(path)[0]["peer_exe"]


@pytest.fixture
def file_size_limit() -> Iterator[Callable[[int], None]]:
    """Set RLIMIT_FSIZE (writes past it fail with EFBIG, like a full disk); restored after."""
    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    previous = resource.getrlimit(resource.RLIMIT_FSIZE)

    def limit(size: int) -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, previous[1]))

    yield limit
    resource.setrlimit(resource.RLIMIT_FSIZE, previous)
    signal.signal(signal.SIGXFSZ, previous_handler)


@pytest.mark.parametrize("room", [0, 100], ids=["nothing fits", "part fits"])
def test_a_record_the_disk_refuses_leaves_no_stub_and_no_gap(
    tmp_path: Path, file_size_limit: Callable[[int], None], room: int
) -> None:
    """Refused at once or cut short: the file keeps whole lines only, and the next record
    takes the refused one's seq, so the chain has no hole."""
    path = tmp_path / "audit.jsonl"
    trail = trail_at(path)
    sign(trail)
    size = path.stat().st_size
    file_size_limit(size + room)
    with pytest.raises(AuditUnavailable):
        sign(trail)
    file_size_limit(resource.RLIM_INFINITY)
    assert size == path.stat().st_size
    sign(trail)
    assert [1, 2] == [r["seq"] for r in records(path)]
    assert verify([path]).ok


def test_a_flood_of_refusals_is_two_records_not_thousands(tmp_path: Path) -> None:
    """Refusals reach the trail through the RejectionLog's aggregation: the first in full,
    the repeats of its window as one count, so a refused peer cannot fill the trail's disk."""
    path = tmp_path / "audit.jsonl"
    trail = trail_at(path)
    rejections = RejectionLog(AuditedRejections(get_logger(), trail))
    for _ in range(1000):
        rejections.reject(403, "forbidden", path="/v1/sign", **PEER.log_fields())
    rejections.flush(everything=True)
    rejected, repeated = records(path)
    assert ("request.rejected", 403, "forbidden", PEER.uid) == (
        rejected["event"],
        rejected["status"],
        rejected["reason"],
        rejected["peer_uid"],
    )
    assert ("request.rejected_repeated", 999, [PEER.pid]) == (
        repeated["event"],
        repeated["repeated"],
        repeated["peer_pids"],
    )


def test_fsync_interval_syncs_written_records_off_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fsync = "interval": after records are written (audit.opened, then a signature), the
    file gets an fdatasync within the interval, in a worker thread, not on the loop."""
    path = tmp_path / "audit.jsonl"
    config = AuditConfig(path=path, fsync="interval", fsync_interval=timedelta(milliseconds=10))
    synced: list[tuple[int, bool]] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        done = asyncio.Event()

        def fake_fdatasync(fd: int) -> None:
            synced.append((fd, threading.current_thread() is threading.main_thread()))
            loop.call_soon_threadsafe(done.set)

        monkeypatch.setattr(os, "fdatasync", fake_fdatasync)
        trail = AuditTrail(config, lambda: ())
        trail.start()
        await asyncio.wait_for(done.wait(), 10)
        done.clear()
        sign(trail)
        await asyncio.wait_for(done.wait(), 10)
        assert [(trail.outlet.fd, False)] * 2 == synced

    asyncio.run(scenario())


def test_a_late_record_already_on_its_way_is_followed_by_audit_voided(
    full_pipe: tuple[int, int],
) -> None:
    """Built and at the head of the queue when its answer timed out: it is finished, then an
    audit.voided record names its seq, so nobody counts a signature that was never given."""
    read_end, write_end = full_pipe
    config = AuditConfig(stdout=True, write_timeout=timedelta(milliseconds=50))

    async def scenario() -> bytes:
        outlet = LineOutlet(write_end)
        trail = AuditTrail(config, lambda: (), stdout=outlet)
        line = trail.signature_issued("sandbox", "v1", "2026-12-01T10:00:00.000Z", PEER)
        assert line is not None
        assert line.data is not None  # built: the pipe refused it whole, it waits at the head
        with pytest.raises(AuditUnavailable):
            await trail.released(line, "answer")
        os.set_blocking(read_end, False)
        received = b""
        while outlet.backlogged:
            with contextlib.suppress(BlockingIOError):
                received += os.read(read_end, 65536)
            await asyncio.sleep(0)
        with contextlib.suppress(BlockingIOError):
            received += os.read(read_end, 65536)
        return received

    lines = [json.loads(line) for line in asyncio.run(scenario()).splitlines() if line.strip()]
    issued, voided = lines[-2:]
    assert ("signature.issued", "audit.voided") == (issued["event"], voided["event"])
    assert (issued["seq"], issued["seq"] + 1) == (voided["voided_seq"], voided["seq"])
    os.close(read_end)
    os.close(write_end)


def test_an_fdatasync_late_past_the_write_timeout_refuses_and_voids_the_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fsync = "always" on a disk that does not finish in time: 503, and the record already in
    the file is followed by audit.voided naming it."""
    path = tmp_path / "audit.jsonl"
    config = AuditConfig(path=path, fsync="always", write_timeout=timedelta(milliseconds=50))
    disk = threading.Event()
    monkeypatch.setattr(os, "fdatasync", lambda _fd: disk.wait(30))

    async def scenario() -> None:
        trail = AuditTrail(config, lambda: ())
        line = trail.signature_issued("sandbox", "v1", "2026-12-01T10:00:00.000Z", PEER)
        assert line is not None
        with pytest.raises(AuditUnavailable):
            await trail.released(line, "answer")
        disk.set()

    asyncio.run(scenario())
    issued, voided = records(path)
    assert ("signature.issued", "audit.voided", issued["seq"]) == (
        issued["event"],
        voided["event"],
        voided["voided_seq"],
    )


def test_a_failed_fdatasync_refuses_and_voids_the_record_already_in_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fsync = "always" and the disk reports EIO: 503, and the record written before the sync
    is followed by audit.voided naming it (no record claims an answer never given)."""
    path = tmp_path / "audit.jsonl"

    def failing_fdatasync(_fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", failing_fdatasync)

    async def scenario() -> None:
        trail = AuditTrail(AuditConfig(path=path, fsync="always"), lambda: ())
        line = trail.signature_issued("sandbox", "v1", "2026-12-01T10:00:00.000Z", PEER)
        assert line is not None
        with pytest.raises(AuditUnavailable):
            await trail.released(line, "answer")

    asyncio.run(scenario())
    issued, voided = records(path)
    assert ("signature.issued", "audit.voided", issued["seq"]) == (
        issued["event"],
        voided["event"],
        voided["voided_seq"],
    )


def test_a_reopen_while_an_fdatasync_is_pending_still_releases_its_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGHUP (logrotate) during a group commit: the old file stays open until its sync ends,
    so the answers waiting for it are released instead of refused with EBADF."""
    path = tmp_path / "audit.jsonl"
    real_fdatasync = os.fdatasync
    entered, disk = threading.Event(), threading.Event()

    def slow_fdatasync(fd: int) -> None:
        if threading.current_thread() is not threading.main_thread():
            entered.set()
            disk.wait(30)
        real_fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", slow_fdatasync)

    async def scenario() -> str:
        trail = AuditTrail(AuditConfig(path=path, fsync="always"), lambda: ())
        line = trail.signature_issued("sandbox", "v1", "2026-12-01T10:00:00.000Z", PEER)
        assert line is not None
        released = asyncio.ensure_future(trail.released(line, "answer"))
        await asyncio.to_thread(entered.wait, 30)
        path.rename(tmp_path / "audit.jsonl.1")
        trail.reopen()
        disk.set()
        return str(await released)

    assert "answer" == asyncio.run(scenario())
    assert ["signature.issued"] == [r["event"] for r in records(tmp_path / "audit.jsonl.1")]


def test_an_applied_reload_records_key_paths_and_no_log_level_value(tmp_path: Path) -> None:
    """admin.reloaded by a signal: every change by key path, the log level as 'changed'."""
    path = tmp_path / "audit.jsonl"
    plan = ReloadPlan(added=("staging",), log_level=("info", "debug"))
    trail_at(path).reloaded(ReloadOutcome("reloaded", plan), None)
    record = records(path)[-1]
    assert ("applied", "signal") == (record["result"], record["by"])
    assert ["environments.staging: added", "log.level: changed"] == record["changes"]


def test_a_refused_reload_names_problem_key_paths_with_keys_redacted(tmp_path: Path) -> None:
    """admin.reloaded by a peer: the refusal's code and key paths; a key used as a TOML key
    name is redacted."""
    path = tmp_path / "audit.jsonl"
    problems = (ConfigProblem(f"environments.{KEY}", "unknown"), ConfigProblem("admin", "bad"))
    trail_at(path).reloaded(ReloadOutcome("config_invalid", problems=problems), PEER)
    record = records(path)[-1]
    assert ("refused", "config_invalid", os.getuid()) == (
        record["result"],
        record["reason"],
        record["peer_uid"],
    )
    assert ["environments.[REDACTED]", "admin"] == record["problems"]
    assert KEY not in path.read_text()


def test_a_refused_reload_of_a_file_with_thousands_of_long_key_paths_stays_verifiable(
    tmp_path: Path,
) -> None:
    """A table with a long quoted name repeats it in every unknown key's path: the record
    names the first 100 paths, cut short, and the count of the rest, so it stays a record
    that audit verify accepts (unbounded, 5000 such paths made one line past its limit)."""
    path = tmp_path / "audit.jsonl"
    long_table = "sources." + "x" * 1000
    problems = tuple(ConfigProblem(f"{long_table}.k{i}", "unknown key") for i in range(5000))
    trail_at(path).reloaded(ReloadOutcome("config_invalid", problems=problems), PEER)
    record = records(path)[-1]
    assert (101, "(and 4900 more)") == (len(record["problems"]), record["problems"][-1])
    assert verify([path]).ok


def test_a_refresh_records_its_environments_and_those_that_failed(tmp_path: Path) -> None:
    """admin.refreshed: which environments, which failed (result 'failed'), and who."""
    path = tmp_path / "audit.jsonl"
    trail_at(path).refreshed(["sandbox", "production"], ["production"], PEER)
    record = records(path)[-1]
    assert ("failed", ["sandbox", "production"], ["production"], "peer") == (
        record["result"],
        record["environments"],
        record["failed"],
        record["by"],
    )
