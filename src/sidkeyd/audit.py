"""The audit trail: one JSON line per decision, chained, written before the answer leaves.

The record schema and the event list are in docs/audit.md. Each record is built when it is
first written (``outlet.Line``), so its ``seq`` and ``chain`` follow the order of the file:
``chain = sha256(previous chain + the record up to its chain field)``. The trail continues the
chain of the file's last record when it opens (a restart, a SIGHUP reopen after logrotate);
a new, empty file continues the chain held in memory.

Fail closed: ``must`` records either are written (``None``), or wait (a ``Line`` whose
``done`` the route awaits for at most ``write_timeout``), or raise ``AuditUnavailable``. A
record withdrawn before it was built leaves no trace; one that was already on its way is
followed by an ``audit.voided`` record naming its ``seq``, so no record claims an answer that
was never given.

With both ``path`` and ``stdout = true`` the file is the trail and stdout a copy of it
(``audit_mirror``): each record goes to the file, then the same bytes to stdout, and a ``must``
record waits for both. A record in the file that stdout did not take in time is followed by
``audit.voided`` (in both), so the file always verifies and never claims an answer not given.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import os
import pwd
import socket
import stat
from collections.abc import Callable, Iterable
from json.encoder import encode_basestring_ascii as _quote
from pathlib import Path
from typing import Any

from sidkeyd import __version__
from sidkeyd.audit_mirror import StdoutMirror
from sidkeyd.config import AuditConfig
from sidkeyd.errors import BadRequest
from sidkeyd.log import get_logger
from sidkeyd.outlet import Line, LineOutlet, WriteFailed
from sidkeyd.peer import Peer
from sidkeyd.redaction import scrub, truncate
from sidkeyd.reload_plan import ReloadOutcome
from sidkeyd.signing import TimestampClock

# An admin.reloaded record names at most this many key paths, each at most this long.
_MAX_KEY_PATHS = 100
_MAX_KEY_PATH = 256

GENESIS = "0" * 64
CHAIN_FIELD = b',"chain":"'
_TAIL_BYTES = 64 * 1024  # enough for the last records of the file
_PEER_CACHE_SIZE = 1024

SecretsProvider = Callable[[], Iterable[str]]


class AuditUnavailable(BadRequest):
    """No record could be written, so nothing is answered (503 ``audit_unavailable``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(
            "audit_unavailable",
            f"the audit record could not be written ({reason}); nothing was signed or answered",
            status=503,
        )


def chain_of(previous: str, body: bytes) -> str:
    return hashlib.sha256(previous.encode("ascii") + body).hexdigest()


def last_record(path: Path) -> tuple[int, str] | None:
    """The ``(seq, chain)`` of the last whole record in ``path``, or None if it has none."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    try:
        return _last_record_of(fd)
    finally:
        os.close(fd)


def _last_record_of(fd: int) -> tuple[int, str] | None:
    size = os.fstat(fd).st_size
    tail = os.pread(fd, _TAIL_BYTES, max(0, size - _TAIL_BYTES))
    for line in reversed(tail.split(b"\n")):
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(record, dict) and isinstance(record.get("seq"), int):
            chain = record.get("chain")
            if isinstance(chain, str) and len(chain) == 64:
                return record["seq"], chain
    return None


def open_trail_file(path: Path) -> int:
    """``path`` opened for appending, only if it is a regular file (created ``0600``).

    Never blocks and never follows a symlink: a FIFO put at the path (open would wait for a
    reader, on the event loop, during SIGHUP) or a symlink into another file is refused.
    """
    flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
    fd = os.open(path, flags, 0o600)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "the audit path is not a regular file", str(path))
    return fd


class AuditTrail:
    def __init__(
        self,
        config: AuditConfig,
        secrets: SecretsProvider,
        *,
        stdout: LineOutlet | None = None,
        origin: str = "",
        counted: Callable[[str], None] = lambda _reason: None,
    ) -> None:
        self.config = config
        self.counted = counted  # the metric of records not written
        self._secrets = secrets
        self._stdout = stdout
        self._log = get_logger()
        self._clock = TimestampClock(digits=6)
        self._seq, self._chain = 0, GENESIS
        self._chain_bytes = GENESIS.encode("ascii")
        self._before = (0, GENESIS)
        self._peers: dict[tuple[int, int, int, str | None], str] = {}
        self._origin = (
            f',"host":{_quote(socket.gethostname())},"daemon_pid":{os.getpid()}'
            f',"origin":{_quote(origin)}'
        )
        self._timeout_s = config.write_timeout.total_seconds()
        self._refuse = config.on_audit_failure == "refuse"
        self._synced = 0
        self._sync_task: asyncio.TimerHandle | None = None
        self._checkpoint_task: asyncio.TimerHandle | None = None
        self._checkpointed = -1
        self._waiting_sync: list[Line] = []
        self._syncing = False
        self._closing_fds: list[int] = []  # reopened away from while an fdatasync ran
        self.failures = 0  # records that could not be written
        self.outlet = self._open()
        self._mirror = self._stdout_mirror()

    # -- the sink ----------------------------------------------------------------------

    def _open(self) -> LineOutlet:
        if self.config.path is None:
            if self._stdout is None:
                self._stdout = LineOutlet(1)
            return self._stdout
        fd = open_trail_file(self.config.path)
        try:
            found = _last_record_of(fd)
        except OSError:
            os.close(fd)
            raise
        if found is not None:
            self._seq, self._chain = found
            self._chain_bytes = self._chain.encode("ascii")
        return LineOutlet(fd)

    def _stdout_mirror(self) -> StdoutMirror | None:
        if self.config.path is None or not self.config.stdout:
            return None
        return StdoutMirror(self._stdout if self._stdout is not None else LineOutlet(1))

    def reopen(self) -> None:
        """SIGHUP (logrotate): a new file at ``path``, continuing the chain."""
        if self.config.path is None:
            return
        old = self.outlet
        try:
            self.outlet = self._open()
        except OSError as exc:
            reason = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
            self._log.error("audit.reopen_failed", reason=reason, message=exc.strerror)
            return
        old.close()
        # Its last records were answered (fsync = "interval") or wait for a sync of it
        # ("always"): sync it here, and close it only once no fdatasync of it is pending.
        with contextlib.suppress(OSError):
            os.fdatasync(old.fd)
        if self._syncing:
            self._closing_fds.append(old.fd)
        else:
            os.close(old.fd)
        self.record("audit.reopened", ',"result":"ok"', must=False)

    def start(self) -> None:
        self.record("audit.opened", f',"result":"ok","version":{_quote(__version__)}', must=False)
        if self.config.fsync == "interval" and self.config.path is not None:
            self._schedule_sync()
        self._schedule_checkpoint()

    def close(self) -> None:
        self.record("audit.closed", ',"result":"ok"', must=False)
        self.checkpoint()
        for task in (self._sync_task, self._checkpoint_task):
            if task is not None:
                task.cancel()
        if self.config.path is not None:
            with contextlib.suppress(OSError):
                os.fdatasync(self.outlet.fd)
            self.outlet.close()
            os.close(self.outlet.fd)

    def problem(self) -> str | None:
        """Why records cannot be written now, for health (``file:``/``stdout:`` with both)."""
        problem = _problem_of(self.outlet)
        if self._mirror is None:
            return problem
        if problem is not None:
            return f"file:{problem}"
        return self._mirror.problem()

    @property
    def refusing(self) -> bool:
        return self._refuse

    # -- records -----------------------------------------------------------------------

    def signature_issued(
        self, environment: str, key_version: str, signed_timestamp: str, peer: Peer
    ) -> Line | None:
        return self.record(
            "signature.issued",
            f',"result":"ok","environment":{_quote(environment)}'
            f',"key_version":{_quote(key_version)},"signed_timestamp":{_quote(signed_timestamp)}'
            + self._peer(peer),
        )

    def signature_verified(
        self,
        environment: str,
        key_version: str,
        valid: bool,
        signed_timestamp: str,
        peer: Peer,
        *,
        rechecked: bool = False,
    ) -> Line | None:
        result = "valid" if valid else "invalid"
        return self.record(
            "signature.verified",
            f',"result":"{result}","environment":{_quote(environment)}'
            f',"key_version":{_quote(key_version)},"rechecked":{"true" if rechecked else "false"}'
            f',"signed_timestamp":{_quote(self._untrusted(signed_timestamp))}' + self._peer(peer),
        )

    def token_issued(self, environment: str, key_version: str, peer: Peer) -> Line | None:
        return self.record(
            "token.issued",
            f',"result":"ok","environment":{_quote(environment)}'
            f',"key_version":{_quote(key_version)}' + self._peer(peer),
        )

    def refused(self, status: int, reason: str, path: str | None, peer: Peer) -> None:
        """A refused request: recorded if it can be, never waited for."""
        self.record(
            "request.rejected",
            f',"result":"refused","status":{status},"reason":{_quote(reason)}'
            f',"path":{_json(self._untrusted(path) if path else None)}' + self._peer(peer),
            must=False,
        )

    def refused_repeatedly(
        self, status: int, reason: str, path: str | None, uid: int, pids: list[int], count: int
    ) -> None:
        """``count`` more refusals of one uid for one reason and path in one window."""
        self.record(
            "request.rejected_repeated",
            f',"result":"refused","status":{status},"reason":{_quote(reason)}'
            f',"path":{_json(self._untrusted(path) if path else None)},"repeated":{count}'
            f',"peer_uid":{uid},"peer_user":{_json(_user(uid))}'
            f',"peer_pids":{json.dumps(pids)}',
            must=False,
        )

    # -- administrative actions (PCI DSS 10.2.2): recorded if they can be, never waited for

    def reloaded(self, outcome: ReloadOutcome, peer: Peer | None) -> None:
        """A config reload, applied or refused, by a peer or (``None``) a signal: what
        changed or what was wrong, by TOML key path, never a value."""
        if outcome.ok:
            plan_changes = outcome.plan.changes if outcome.plan else ()
            changes = [_without_value(change) for change in plan_changes]
            fields = f',"result":"applied","changes":{self._key_paths(changes)}'
        else:
            problems = [problem.key for problem in outcome.problems]
            fields = (
                f',"result":"refused","reason":{_quote(outcome.code)}'
                f',"problems":{self._key_paths(problems)}'
            )
        self.record("admin.reloaded", fields + self._by(peer), must=False)

    def refreshed(self, environments: list[str], failed: list[str], peer: Peer) -> None:
        """``POST /v1/refresh``: the environments checked, those whose check failed."""
        self.record(
            "admin.refreshed",
            f',"result":"{"failed" if failed else "ok"}"'
            f',"environments":{json.dumps(environments)},"failed":{json.dumps(failed)}'
            + self._by(peer),
            must=False,
        )

    def _key_paths(self, paths: list[str]) -> str:
        # Key paths come from the file: a key pasted as a TOML key name must not be recorded.
        # Bounded: every unknown key of a table with a long quoted name repeats that name, so
        # a 200 KB file could make a record of gigabytes (the loop blocked building it, and a
        # line past audit verify's limit reads as tampering).
        secrets = list(self._secrets())
        shown = [truncate(scrub(path, secrets), _MAX_KEY_PATH) for path in paths[:_MAX_KEY_PATHS]]
        if len(paths) > _MAX_KEY_PATHS:
            shown.append(f"(and {len(paths) - _MAX_KEY_PATHS} more)")
        return json.dumps(shown)

    def _by(self, peer: Peer | None) -> str:
        return ',"by":"signal"' if peer is None else ',"by":"peer"' + self._peer(peer)

    def record(self, event: str, fields: str, *, must: bool = True) -> Line | None:
        """Write one record; see the module docstring for what ``must`` promises."""
        head = f',"time":"{self._clock.now()}","event":"{event}"{fields}{self._origin}'
        outlet = self.outlet
        try:
            if outlet.backlogged:  # built when its turn comes, so seq follows the file
                line = outlet.commit(lambda: self._build(head), self._rolled_back)
            else:  # the common case: no closure, no queue entry
                data = self._build(head)
                line = outlet.write(data, self._rolled_back)
        except WriteFailed as exc:
            reason = exc.reason if self._mirror is None else f"file:{exc.reason}"
            self._failed(reason)
            if must and self._refuse:
                raise AuditUnavailable(reason) from None
            self._log.error("audit.record_lost", audit_event=event, reason=reason)
            return None
        if self._mirror is not None:  # the file never queues: the record is in it
            return self._mirrored(event, data, must)
        if line is not None and (not must or not self._refuse):
            return None  # written when the sink drains; nobody waits for it
        if line is None and must and self.config.fsync == "always" and self._refuse:
            return self._synced_line()
        return line

    def _mirrored(self, event: str, data: bytes, must: bool) -> Line | None:
        """The record in the file, now on stdout too; what the answer waits for, if anything."""
        assert self._mirror is not None
        waits = must and self._refuse
        try:
            copy = self._mirror.copy(data)
        except WriteFailed as exc:
            self._failed(exc.reason)
            if waits:
                self._void(Line(data))  # in the file, not on stdout, and never answered
                raise AuditUnavailable(exc.reason) from None
            self._log.error("audit.record_lost", audit_event=event, reason=exc.reason)
            return None
        if not waits:
            return None  # on its way to stdout; nobody waits for it
        synced = self._synced_line() if self.config.fsync == "always" else None
        if copy is None:
            return synced
        return self._mirror.joined(data, copy, synced, self._void)

    def _build(self, head: str) -> bytes:
        seq = self._seq + 1
        self._before = (self._seq, self._chain)
        body = f'{{"seq":{seq}{head}'.encode()
        chain = hashlib.sha256(self._chain_bytes + body).hexdigest()
        self._seq, self._chain = seq, chain
        self._chain_bytes = chain.encode("ascii")
        return b'%b%b%b"}\n' % (body, CHAIN_FIELD, self._chain_bytes)

    def _failed(self, reason: str) -> None:
        self.failures += 1
        self.counted(reason)

    def _rolled_back(self) -> None:
        self._seq, self._chain = self._before
        self._chain_bytes = self._chain.encode("ascii")

    async def released(self, line: Line, answer: Any) -> Any:
        """``answer`` once ``line`` is written; ``AuditUnavailable`` after ``write_timeout``."""
        assert line.done is not None
        try:
            await asyncio.wait_for(asyncio.shield(line.done), self._timeout_s)
        except WriteFailed as exc:
            self._failed(exc.reason)
            raise AuditUnavailable(exc.reason) from None
        except TimeoutError:
            reason = self._late()
            self._failed(reason)
            if not self.outlet.withdraw(line):
                self._void(line)
                line.done.cancel()  # voided once: a sync failing later must not void it again
            raise AuditUnavailable(reason) from None
        return answer

    def _late(self) -> str:
        """Which sink an answer timed out on: stdout's queue, else the file's fdatasync."""
        if self._mirror is None:
            return "sink_blocked"
        return "stdout:sink_blocked" if self._mirror.backlogged else "file:sink_blocked"

    def _void(self, line: Line) -> None:
        data = line.data or b""
        seq = data[len(b'{"seq":') : data.index(b",")].decode() if data else "null"
        self.record("audit.voided", f',"result":"voided","voided_seq":{seq}', must=False)

    # -- checkpoints -----------------------------------------------------------------------

    def checkpoint(self) -> None:
        """The chain head, in the trail and in the operational log, where a rewrite of the
        file cannot reach it (the journal): ``audit verify --checkpoint SEQ:CHAIN``."""
        if self._seq == self._checkpointed:
            return
        self.record("audit.checkpoint", ',"result":"ok"', must=False)
        self._checkpointed = self._seq
        # The last record built: the checkpoint itself unless it is still queued.
        self._log.info("audit.checkpoint", seq=self._seq, chain=self._chain)

    def _schedule_checkpoint(self) -> None:
        def run() -> None:
            self.checkpoint()
            self._schedule_checkpoint()

        self._checkpoint_task = asyncio.get_running_loop().call_later(
            self.config.checkpoint_interval.total_seconds(), run
        )

    # -- durability ----------------------------------------------------------------------

    def _synced_line(self) -> Line:
        """fsync = "always": a line whose ``done`` is the next fdatasync (group commit)."""
        loop = asyncio.get_running_loop()
        # Its data names the record's seq, for the audit.voided record if the sync is late.
        line = Line(f'{{"seq":{self._seq},'.encode(), done=loop.create_future())
        self._waiting_sync.append(line)
        if len(self._waiting_sync) == 1 and not self._syncing:
            loop.call_soon(self._group_commit)
        return line

    def _group_commit(self) -> None:
        batch, self._waiting_sync = self._waiting_sync, []
        self._syncing = True
        loop = asyncio.get_running_loop()
        sync = loop.run_in_executor(None, os.fdatasync, self.outlet.fd)

        def finished(done: asyncio.Future[None]) -> None:
            self._syncing = False
            while self._closing_fds:
                os.close(self._closing_fds.pop())
            error = done.exception()
            for line in batch:
                assert line.done is not None
                if line.done.done():
                    continue
                if error is None:
                    line.done.set_result(None)
                else:
                    line.done.set_exception(WriteFailed(type(error).__name__))
                    self._void(line)  # its record is in the file; its answer is refused
            if self._waiting_sync:
                self._group_commit()

        sync.add_done_callback(finished)

    def _schedule_sync(self) -> None:
        loop = asyncio.get_running_loop()
        self._sync_task = loop.call_later(
            self.config.fsync_interval.total_seconds(), self._interval_sync
        )

    def _interval_sync(self) -> None:
        if self.outlet.written != self._synced:
            self._synced = self.outlet.written
            asyncio.get_running_loop().run_in_executor(None, self._quiet_sync, self.outlet.fd)
        self._schedule_sync()

    @staticmethod
    def _quiet_sync(fd: int) -> None:
        with contextlib.suppress(OSError):
            os.fdatasync(fd)

    # -- fields ----------------------------------------------------------------------------

    def _untrusted(self, text: str) -> str:
        return truncate(scrub(text, self._secrets()), 128)

    def _peer(self, peer: Peer) -> str:
        key = (peer.pid, peer.uid, peer.gid, peer.exe)
        fragment = self._peers.get(key)
        if fragment is None:
            if len(self._peers) >= _PEER_CACHE_SIZE:
                self._peers.clear()
            # Once per peer, so the hot path scrubs nothing: every other string of a hot-path
            # record is validated (environment, the signed timestamp) or the daemon's own.
            fragment = self._peers[key] = scrub(peer_fields(peer), self._secrets())
        return fragment


def _problem_of(outlet: LineOutlet) -> str | None:
    if outlet.failure is not None:
        return outlet.failure
    if outlet.backlogged:
        return "sink_blocked"
    return None


def peer_fields(peer: Peer) -> str:
    """Who, pre-encoded: uid, user, gid, pid, executable, systemd unit and cgroup."""
    cgroup = _cgroup(peer.pid)
    return (
        f',"peer_uid":{peer.uid},"peer_user":{_json(_user(peer.uid))},"peer_gid":{peer.gid}'
        f',"peer_pid":{peer.pid},"peer_exe":{_json(peer.exe)},"peer_exe_verified":false'
        f',"peer_unit":{_json(_unit(cgroup))},"peer_cgroup":{_json(cgroup)}'
    )


def _without_value(change: str) -> str:
    """``log.level: info -> debug`` as ``log.level: changed``; the other changes name no value."""
    key, _, what = change.partition(": ")
    return f"{key}: changed" if "->" in what else change


def _json(value: str | None) -> str:
    return "null" if value is None else str(_quote(value))


def _user(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError):
        return None


def _cgroup(pid: int) -> str | None:
    """The peer's cgroup v2 path (``0::/system.slice/app.service``), where /proc has it."""
    if pid <= 0:
        return None
    try:
        with open(f"/proc/{pid}/cgroup", encoding="utf-8", errors="replace") as file:
            for line in file:
                if line.startswith("0::"):
                    return line[3:].strip() or None
    except OSError:
        return None
    return None


def _unit(cgroup: str | None) -> str | None:
    if not cgroup:
        return None
    for part in reversed(cgroup.split("/")):
        if part.endswith((".service", ".scope")):
            return part
    return None


class AuditedRejections:
    """The ``RejectionLog``'s logger when a trail exists: each line it writes (aggregated, so
    a refused peer cannot flood the trail and so fill its disk) also becomes a record."""

    def __init__(self, log: Any, trail: AuditTrail) -> None:
        self._log = log
        self._trail = trail

    def info(self, event: str, **fields: Any) -> None:
        self._log.info(event, **fields)
        status, reason, path = int(fields["status"]), str(fields["reason"]), fields.get("path")
        if event == "request.rejected":
            peer = Peer(
                pid=int(fields.get("peer_pid", 0)),
                uid=int(fields.get("peer_uid", -1)),
                gid=int(fields.get("peer_gid", -1)),
                exe=fields.get("peer_exe"),
            )
            self._trail.refused(status, reason, path, peer)
        elif event == "request.rejected_repeated":
            self._trail.refused_repeatedly(
                status,
                reason,
                path,
                int(fields["peer_uid"]),
                list(fields["peer_pids"]),
                int(fields["repeated"]),
            )
