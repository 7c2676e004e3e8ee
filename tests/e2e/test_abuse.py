"""The daemon as a real process under abuse: raw fuzz, slow-loris, connection floods, idle peers.

While one connection is abused, a well-behaved client signs on another and must never see
an error; the daemon must stay up and keep its key out of its log.
"""

from __future__ import annotations

import contextlib
import json
import re
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.daemon import Daemon, parse_responses, read_all

T = TypeVar("T")

SANDBOX_KEY = "abuse-sandbox-key-3d1f-not-real"
KEYS = f"""
["smileid/sandbox"]
api_key = "{SANDBOX_KEY}"
partner_id = "085"
"""


def documented_errors() -> frozenset[tuple[int, str]]:
    """(status, code) pairs from the error table of docs/protocol.md."""
    text = (Path(__file__).parents[2] / "docs" / "protocol.md").read_text()
    return frozenset(
        (int(status), code) for status, code in re.findall(r"^\| (\d{3}) \| `(\w+)` \|", text, re.M)
    )


DOCUMENTED_ERRORS = documented_errors()
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def config(**server: str | int) -> str:
    """A one-environment config; ``server`` adds keys to the ``[server]`` table."""
    extra = "".join(f"{name} = {json.dumps(value)}\n" for name, value in server.items())
    return (
        '[server]\nsocket = "{socket}"\n'
        + extra
        + '\n[log]\nformat = "json"\nlevel = "debug"\n'
        + '\n[sources.local]\ntype = "file"\npath = "keys.toml"\n'
        + '\n[environments.sandbox]\nsource = "local"\nsecret = "smileid/sandbox"\n'
    )


@pytest.fixture
def abused(start_daemon) -> Iterator[Callable[..., Daemon]]:
    """Start a daemon with ``[server]`` settings; its log is scanned for the key afterwards."""
    daemons: list[Daemon] = []

    def start(**server: str | int) -> Daemon:
        daemon = start_daemon(config(**server), files={"keys.toml": KEYS})
        daemons.append(daemon)
        return daemon

    yield start
    for daemon in daemons:
        assert daemon.process is not None
        assert daemon.stopped or daemon.process.poll() is None, "the daemon died"
        daemon.assert_no_secret_in_logs([SANDBOX_KEY])


class Signer:
    """A well-behaved client signing in a loop on its own keep-alive connection."""

    def __init__(self, daemon: Daemon) -> None:
        self._client = daemon.client()
        self._stop = threading.Event()
        self._signed = threading.Condition()
        self.count = 0
        self.errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                assert "sandbox" == self._client.sign("sandbox")["environment"]
            except BaseException as exc:  # collected, asserted on by the test
                self.errors.append(exc)
                return
            with self._signed:
                self.count += 1
                self._signed.notify_all()

    def wait_for(self, count: int, timeout: float = 30) -> None:
        with self._signed:
            assert self._signed.wait_for(lambda: self.count >= count or self.errors, timeout)

    def __enter__(self) -> Signer:
        self._thread.start()
        self.wait_for(1)
        return self

    def __exit__(self, *exc: object) -> None:
        self.wait_for(self.count + 3)  # it keeps signing after the abuse
        self._stop.set()
        self._thread.join(30)
        self._client.close()


def eventually(probe: Callable[[], T | None], what: str, timeout: float = 10) -> T:
    """Poll an observable condition until it holds (a bounded wait, not a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.02)


def exchange(daemon: Daemon, data: bytes) -> bytes:
    """Send ``data`` on a fresh connection, half-close it, read until the daemon closes."""
    with daemon.connect() as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        return read_all(sock)


def read_response(sock: socket.socket) -> tuple[bytes, bytes]:
    """One response off a kept-alive connection: (head, body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "closed before a response"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "closed mid-response"
        body += chunk
    assert length == len(body), "more than one response"
    return head, body


def post(path: str, body: bytes, extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: sidkeyd\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


SIGN = post("/v1/sign", b'{"environment": "sandbox"}')
VALID = [
    SIGN,
    post("/v1/verify", b'{"environment": "sandbox", "timestamp": "x", "signature": "y"}'),
    b"GET /v1/status HTTP/1.1\r\nHost: sidkeyd\r\n\r\n",
    b"GET /v1/health HTTP/1.1\r\n\r\n",
]
MALFORMED = [
    b"GET / HTTP/1.1\r\nX-Huge: " + b"h" * 20000 + b"\r\n\r\n",
    post("/v1/sign", b"b" * 70000),
    b"POST /v1/sign HTTP/1.1\r\nContent-Length: 999999999999\r\n\r\n",
    b"POST /v1/sign HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"POST /v1/sign HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    b"GET /v1/\xff\xfe HTTP/1.1\r\n\r\n",
    b"GET /v1/health HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    post("/v1/sign", SIGN, "Connection: Upgrade\r\nUpgrade: h2c\r\n"),  # a request as body
    post("/v1/sign", b'{"environment": "sandbox"}', "Expect: 100-continue\r\n"),
    b"CONNECT sidkeyd:443 HTTP/1.1\r\n\r\n",
    b"GET /v1/health\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello
    post("/v1/sign", b'{"environment": "sandbox"', "Connection: close\r\n") + SIGN,
    SIGN * 200,
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid request with a few bytes inserted, deleted or replaced, or cut short."""
    data = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(data)))
        operation = draw(st.sampled_from(["insert", "delete", "replace", "truncate"]))
        if operation == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif operation == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        elif operation == "replace":
            data[at : at + 1] = draw(st.binary(min_size=1, max_size=1))
        else:
            del data[at:]
    return bytes(data)


abuse = st.one_of(
    st.binary(max_size=2000),
    mutated(),
    st.lists(st.sampled_from(MALFORMED + VALID), min_size=1, max_size=3).map(b"".join),
)


def assert_documented(raw: bytes) -> list[tuple[int, str | None]]:
    """Well-formed responses with documented error codes, none after a Connection: close."""
    answers: list[tuple[int, str | None]] = []
    while raw:
        if raw.startswith(CONTINUE):  # the interim answer to Expect: 100-continue
            raw = raw[len(CONTINUE) :]
            continue
        head, sep, rest = raw.partition(b"\r\n\r\n")
        assert b"\r\n\r\n" == sep, f"unterminated response head {raw[:100]!r}"
        status_line, *lines = head.decode("latin-1").split("\r\n")
        version, status, _ = status_line.split(" ", 2)
        headers = dict(line.lower().split(": ", 1) for line in lines)
        length = int(headers["content-length"])
        assert ("HTTP/1.1", "application/json") == (version, headers["content-type"])
        body = json.loads(rest[:length])
        code = body["error"]["code"] if int(status) >= 300 else None
        if code is not None:
            assert (int(status), code) in DOCUMENTED_ERRORS
        answers.append((int(status), code))
        raw = rest[length:]
        if "close" == headers.get("connection"):
            assert b"" == raw, "a response after Connection: close"
    return answers


# -- tests -----------------------------------------------------------------------------------


def test_random_bytes_never_disturb_a_signing_client(abused) -> None:
    """Hypothesis-made bytes on fresh connections get documented answers; signing goes on."""
    daemon = abused(read_timeout="5s")

    @settings(
        max_examples=150,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(abuse)
    def fuzz(data: bytes) -> None:
        assert_documented(exchange(daemon, data))

    with Signer(daemon) as signer:
        fuzz()
    assert [] == signer.errors
    healthy, health = daemon.client().health()
    assert (True, "ok") == (healthy, health["status"])


def test_slow_loris_clients_are_cut_off_while_a_client_signs(abused) -> None:
    """Requests dribbled slower than read_timeout get 408 (or a close), never an answer."""
    daemon = abused(read_timeout="300ms")
    body = b'{"environment": "sandbox"}'
    head = post("/v1/sign", body)[: -len(body)]
    dribbled = [(b"", SIGN), (head, body)]  # the whole request slowly; the body slowly
    results: list[bytes] = []

    def loris(prefix: bytes, request: bytes) -> None:
        with daemon.connect() as sock:
            sock.sendall(prefix)
            for index in range(len(request)):
                # The pacing is the input: a byte every 100 ms unless the daemon speaks first.
                if select.select([sock], [], [], 0.1)[0]:
                    break
                try:
                    sock.sendall(request[index : index + 1])
                except (BrokenPipeError, ConnectionResetError):
                    break
            results.append(read_all(sock))

    with Signer(daemon) as signer:
        threads = [threading.Thread(target=loris, args=pair) for pair in dribbled * 3]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert [] == signer.errors
    assert len(threads) == len(results)
    for raw in results:
        assert assert_documented(raw) in ([], [(408, "request_timeout")])
    daemon.stop()  # the aggregated counts of refusals are flushed at shutdown
    assert len(threads) == daemon.rejections("request_timeout")


def test_a_connection_flood_is_refused_while_a_held_connection_signs(abused) -> None:
    """Over max_connections: a quick 503 and close; the held connection keeps signing."""
    daemon = abused(max_connections=20, idle_timeout="60s")
    holder = daemon.client()
    holder.sign("sandbox")  # holds one of the 20
    flood = [daemon.connect() for _ in range(40)]
    try:
        refused: dict[socket.socket, bytes] = {}

        def all_refusals_arrived() -> bool:
            readable, _, _ = select.select([s for s in flood if s not in refused], [], [], 0.1)
            for sock in readable:
                refused[sock] = read_all(sock)
            return 21 <= len(refused)

        eventually(all_refusals_arrived, "21 refused connections")
        assert [[(503, "too_many_connections")]] * 21 == [
            [(status, body["error"]["code"]) for status, body in parse_responses(raw)]
            for raw in refused.values()
        ]
        assert "sandbox" == holder.sign("sandbox")["environment"]
        accepted = [sock for sock in flood if sock not in refused]
        assert 19 == len(accepted)
        for sock in accepted:
            sock.sendall(b"GET /v1/health HTTP/1.1\r\nConnection: close\r\n\r\n")
        assert [[200]] * 19 == [
            [status for status, _ in parse_responses(read_all(sock))] for sock in accepted
        ]
    finally:
        for sock in flood:
            sock.close()

    def capacity_is_back() -> bool:
        fresh = [daemon.connect() for _ in range(19)]
        try:
            for sock in fresh:
                sock.sendall(SIGN)
            return all(b" 200 " in read_response(sock)[0] for sock in fresh)
        except (AssertionError, OSError):
            return False
        finally:
            for sock in fresh:
                sock.close()

    eventually(capacity_is_back, "19 new connections accepted after the flood")
    assert "sandbox" == holder.sign("sandbox")["environment"]


def test_an_idle_keep_alive_connection_is_closed(abused) -> None:
    """After a kept-alive answer and idle_timeout without a request, the daemon closes."""
    daemon = abused(idle_timeout="300ms")
    with daemon.connect() as sock:
        sock.sendall(SIGN)
        head, _ = read_response(sock)
        assert head.startswith(b"HTTP/1.1 200 ")
        assert b"connection: close" not in head.lower()
        assert b"" == sock.recv(1)  # blocks until the daemon closes it


def test_a_connection_that_never_speaks_is_closed(abused) -> None:
    """A connection that sends nothing is closed after idle_timeout, without a response."""
    daemon = abused(idle_timeout="300ms")
    with daemon.connect() as sock:
        assert b"" == read_all(sock)
    assert "sandbox" == daemon.client().sign("sandbox")["environment"]
