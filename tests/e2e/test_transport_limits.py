"""The transport's limits against the daemon as a real process: clients that never read,
trickle bytes, hoard connections, find the daemon stopped or half-close their socket.

Each test is a regression from an outside attack run; while a connection is abused, other
clients must keep being served and the daemon must stay up (the ``abused`` fixture checks).
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import socket
import time
from collections.abc import Callable, Iterator

import pytest
from test_abuse import KEYS, SANDBOX_KEY, SIGN, Signer, config, exchange, post, read_response

from support.daemon import Daemon, parse_responses, read_all

STATUS = b"GET /v1/status HTTP/1.1\r\n\r\n"  # a short request with a long (admin) answer
HEALTH = b"GET /v1/health HTTP/1.1\r\n\r\n"
HEALTH_AND_CLOSE = b"GET /v1/health HTTP/1.1\r\nConnection: close\r\n\r\n"
MIB = 1024 * 1024


@pytest.fixture
def abused(start_daemon) -> Iterator[Callable[..., Daemon]]:
    """Start a daemon with ``[server]`` settings; afterwards it must be up, its log key-free."""
    daemons: list[Daemon] = []

    def start(**server: str | int) -> Daemon:
        daemon = start_daemon(config(**server), files={"keys.toml": KEYS})
        daemons.append(daemon)
        return daemon

    yield start
    for daemon in daemons:
        assert daemon.process is not None
        assert daemon.process.poll() is None, "the daemon died"
        daemon.assert_no_secret_in_logs([SANDBOX_KEY])


def resident_bytes(pid: int) -> int:
    """The process's resident set (VmRSS in /proc/<pid>/status)."""
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


def send_until_refused(sock: socket.socket, data: bytes, total: int) -> int:
    """Send ``data`` repeatedly up to ``total`` bytes; stop when the daemon stops reading."""
    sent = 0
    with contextlib.suppress(TimeoutError, BrokenPipeError, ConnectionResetError):
        while sent < total:
            sock.sendall(data)
            sent += len(data)
    return sent


def test_a_pipelining_client_that_never_reads_holds_bounded_memory(abused) -> None:
    """64 MiB of pipelined requests never read: the daemon's memory grows by little.

    Every request was answered into an unbounded write buffer (1.1 GB in 90 s in the attack
    run); now a connection whose unsent answers pass the high-water mark is neither read nor
    dispatched for, so the client's send blocks instead, and other clients are served.
    """
    daemon = abused(write_timeout="60s")
    assert daemon.process is not None
    burst = STATUS * (64 * 1024 // len(STATUS))
    with Signer(daemon) as signer, daemon.connect() as hog:
        before = resident_bytes(daemon.process.pid)
        hog.settimeout(2)  # a blocked send is the daemon refusing to read more
        sent = send_until_refused(hog, burst, 64 * MIB)
        grown = resident_bytes(daemon.process.pid) - before
        signer.wait_for(signer.count + 3)  # served while the hog is held
    assert [] == signer.errors
    # The old code read all 64 MiB and queued hundreds of MiB of answers.
    assert (True, True) == (grown < 16 * MIB, sent < 8 * MIB), (
        f"resident memory grew by {grown / MIB:.0f} MiB; {sent / MIB:.0f} MiB were read"
    )


def test_a_connection_that_never_reads_is_aborted_after_write_timeout(abused) -> None:
    """A burst whose answers are never read frees its slot after write_timeout.

    Such a connection used to hold its slot for good: idle_timeout closed it only once its
    unsent answers were out, which never happened.
    """
    daemon = abused(write_timeout="1s", idle_timeout="60s", max_connections=2)
    with daemon.connect() as stuck:
        stuck.settimeout(5)
        send_until_refused(stuck, STATUS * 2000, 2 * MIB)  # MiBs of answers, never read
        event = daemon.wait_for_event("connection.closed", reason="write_timeout", timeout=15)
        assert 0 < event["unsent_bytes"]
        fresh = [daemon.connect() for _ in range(2)]  # both slots are free again
        try:
            for sock in fresh:
                sock.sendall(SIGN)
            assert [True, True] == [
                read_response(sock)[0].startswith(b"HTTP/1.1 200 ") for sock in fresh
            ]
        finally:
            for sock in fresh:
                sock.close()


def test_stray_newlines_between_requests_do_not_reset_the_idle_timeout(abused) -> None:
    """A client sending CRLF every 100 ms is closed at idle_timeout, not kept open.

    Every byte used to re-arm the (longer) read timer, so the trickle held the slot forever.
    """
    daemon = abused(idle_timeout="500ms", read_timeout="30s")
    with daemon.connect() as sock:
        sock.sendall(SIGN)
        assert read_response(sock)[0].startswith(b"HTTP/1.1 200 ")
        closed = False
        deadline = time.monotonic() + 10  # far beyond idle_timeout, far short of read_timeout
        while not closed and time.monotonic() < deadline:
            try:
                sock.sendall(b"\r\n")
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            # The pacing is the input: a CRLF every 100 ms unless the daemon closes first.
            if select.select([sock], [], [], 0.1)[0]:
                closed = b"" == read_all(sock)
    assert closed, "the trickling connection was still open"
    daemon.wait_for_event("connection.closed", reason="idle_timeout")


@pytest.mark.skipif(os.geteuid() != 0, reason="switching uid needs root")
def test_a_uid_at_its_connection_limit_is_refused_while_another_uid_connects(abused) -> None:
    """Past max_connections_per_uid: 503 too_many_connections_for_uid; nobody still connects."""
    from test_access import NOBODY, NOGROUP, request_as

    daemon = abused(max_connections=10, max_connections_per_uid=3, socket_group="nogroup")
    os.chmod(daemon.socket_path.parent, 0o755)  # let other uids reach the socket's folder
    held = [daemon.connect() for _ in range(3)]
    try:
        for sock in held:
            sock.sendall(HEALTH)
            assert read_response(sock)[0].startswith(b"HTTP/1.1 200 ")
        refused = parse_responses(daemon.raw(HEALTH_AND_CLOSE))
        assert [(503, "too_many_connections_for_uid")] == [
            (status, body["error"]["code"]) for status, body in refused
        ]
        status, _ = request_as(daemon, NOBODY, NOGROUP, (), "GET", "/v1/health")
        assert 200 == status
    finally:
        for sock in held:
            sock.close()
    daemon.wait_for_event("request.rejected", reason="too_many_connections_for_uid")


def test_the_listen_backlog_is_not_cut_to_100(abused) -> None:
    """With the daemon stopped, 150 connections queue in the backlog instead of EAGAIN.

    uvloop listened again with its default of 100, overriding the 1024 asked for.
    """
    daemon = abused(max_connections=256)
    pending = []
    results = []
    daemon.signal(signal.SIGSTOP)
    try:
        for _ in range(150):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.setblocking(False)
            pending.append(sock)
            results.append(sock.connect_ex(str(daemon.socket_path)))
    finally:
        daemon.signal(signal.SIGCONT)
        for sock in pending:
            sock.close()
    assert (150, 0) == (results.count(0), results.count(errno.EAGAIN))
    assert "sandbox" == daemon.client().sign("sandbox")["environment"]


@pytest.mark.parametrize(
    "awaited",
    [
        post("/v1/refresh", b"{}"),
        post(
            "/v1/report", b'{"environment": "sandbox", "key_version": "{version}", "status": 401}'
        ),
    ],
    ids=["refresh", "report"],
)
def test_a_half_closed_client_gets_every_answer(abused, awaited: bytes) -> None:
    """An awaited route and a sign pipelined behind it, then SHUT_WR: both are answered.

    On EOF the transport closed at once, dropping the answers still waiting on the backend.
    """
    daemon = abused()
    version = daemon.client().sign("sandbox")["key_version"]
    body = awaited.partition(b"\r\n\r\n")[2].replace(b"{version}", version.encode())
    request = post(awaited.split(b" ", 2)[1].decode(), body)
    answers = parse_responses(exchange(daemon, request + SIGN))
    assert [200, 200] == [status for status, _ in answers]
    assert "sandbox" == answers[1][1]["environment"]
