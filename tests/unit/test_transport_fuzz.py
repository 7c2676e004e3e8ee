"""The HTTP transport driven in-process with random and hostile bytes (hypothesis).

``HttpProtocol`` runs on a real event loop over a fake transport that records what is written,
in front of an ``Application`` over a ``KeyManager`` with an in-memory source. Requests are fed
whole or split at random chunk boundaries; what comes back must always be well-formed HTTP/1.1
with a JSON body and a documented error code, and framing errors must close the connection.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import threading
from collections.abc import Awaitable, Iterator, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, settings
from structlog.testing import capture_logs

from sidkeyd.app import Application
from sidkeyd.config import Config, EnvironmentConfig, FileSourceConfig
from sidkeyd.keystore import KeyStore
from sidkeyd.rotation import KeyManager
from sidkeyd.transport import ConnectionTracker, HttpProtocol, Limits
from support.fakes import FakeSource

T = TypeVar("T")

SANDBOX_KEY = "fuzz-sandbox-key-0c9e-not-real"
LIMITS = Limits(
    max_header_bytes=1024, max_body_bytes=2048, read_timeout_s=3600, idle_timeout_s=3600
)

# Module-local hypothesis settings (no global profile): bounded, no deadline on a 2-core box.
FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def documented_errors() -> frozenset[tuple[int, str]]:
    """(status, code) pairs from the error table of docs/protocol.md."""
    text = (Path(__file__).parents[2] / "docs" / "protocol.md").read_text()
    return frozenset(
        (int(status), code) for status, code in re.findall(r"^\| (\d{3}) \| `(\w+)` \|", text, re.M)
    )


# Emitted by the transport but missing from the docs' table (reported; see the module's report).
UNDOCUMENTED_ERRORS = frozenset({(400, "upgrade_not_supported")})
ALLOWED_ERRORS = documented_errors() | UNDOCUMENTED_ERRORS
# Errors after which the request framing is lost: the connection must be closed.
CLOSING_CODES = frozenset(
    {
        "malformed_request",
        "upgrade_not_supported",
        "headers_too_large",
        "body_too_large",
        "length_required",
        "request_timeout",
        "too_many_connections",
    }
)


# -- harness -------------------------------------------------------------------------------


class FakeTransport:
    """Records writes; counts any write made after ``close()`` (which must never happen)."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False
        self.aborted = False
        self.writes_after_close = 0
        self.paused = False
        self.closed_event = asyncio.Event()

    def write(self, data: bytes) -> None:
        if self.closed:
            self.writes_after_close += 1
        self.written += data

    def close(self) -> None:
        self.closed = True
        self.closed_event.set()

    def abort(self) -> None:
        self.aborted = True
        self.close()

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class Server:
    """An event loop with an Application over a KeyManager holding one in-memory key."""

    def __init__(self) -> None:
        self.source = FakeSource("fake")
        self.source.put("smileid/sandbox", SANDBOX_KEY, "v1", "085")
        env = EnvironmentConfig(
            name="sandbox", source="fake", secret="smileid/sandbox", partner_id="085"
        )
        self.config = Config(
            sources=MappingProxyType({"fake": FileSourceConfig(name="fake", path=Path(__file__))}),
            environments=MappingProxyType({"sandbox": env}),
        )
        self.manager = KeyManager(self.config, {"fake": self.source}, KeyStore())
        self.loop = asyncio.new_event_loop()
        self.run(self.manager.start())
        self.app = Application(self.config, self.manager)

    def run(self, awaitable: Awaitable[T]) -> T:
        async def wrapper() -> T:
            return await awaitable

        return self.loop.run_until_complete(wrapper())

    def close(self) -> None:
        self.run(self.manager.stop())
        self.loop.close()


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def code(self) -> str | None:
        error = self.body.get("error")
        return error.get("code") if isinstance(error, dict) else None

    @property
    def closes(self) -> bool:
        return "close" == self.headers.get("connection")


@dataclass
class Outcome:
    replies: list[Reply]
    transport: FakeTransport
    logs: list[dict[str, Any]] = field(default_factory=list)


STATUS_LINE = re.compile(rb"HTTP/1\.1 ([1-5]\d\d) ([A-Za-z' -]+)")


def parse_replies(data: bytes) -> list[Reply]:
    """Strictly split the written bytes into HTTP/1.1 responses with JSON object bodies."""
    replies = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        assert b"\r\n\r\n" == sep, f"response head is not terminated: {data[:200]!r}"
        status_line, *header_lines = head.split(b"\r\n")
        match = STATUS_LINE.fullmatch(status_line)
        assert match is not None, f"bad status line {status_line!r}"
        status = int(match[1])
        assert HTTPStatus(status).phrase == match[2].decode()
        headers = {}
        for line in header_lines:
            name, sep, value = line.decode("ascii").partition(": ")
            assert ": " == sep, f"bad header line {line!r}"
            assert name.lower() not in headers, f"repeated header {name}"
            headers[name.lower()] = value
        assert "application/json" == headers["content-type"]
        length = int(headers["content-length"])
        assert length <= len(rest), "response body is truncated"
        body = json.loads(rest[:length].decode("utf-8"))
        assert isinstance(body, dict)
        replies.append(Reply(status, headers, body))
        data = rest[length:]
    return replies


async def settle(baseline: set[asyncio.Task[Any]]) -> None:
    """Wait until every task started since ``baseline`` (pending responses) has finished."""
    for _ in range(100):
        pending = {
            task
            for task in asyncio.all_tasks()
            if task not in baseline and task is not asyncio.current_task() and not task.done()
        }
        if not pending:
            return
        await asyncio.wait(pending, timeout=10)
    raise AssertionError("responses never finished")


async def converse(app: Application, chunks: Sequence[bytes], limits: Limits) -> Outcome:
    """Open a connection, feed ``chunks`` one ``data_received`` at a time, let it settle."""
    baseline = asyncio.all_tasks()
    transport = FakeTransport()
    protocol = HttpProtocol(app, limits, ConnectionTracker(10))
    with capture_logs() as logs:
        protocol.connection_made(transport)  # type: ignore[arg-type]
        for chunk in chunks:
            if transport.closed:
                break  # a closed transport delivers nothing more
            protocol.data_received(chunk)
            await settle(baseline)
        protocol.connection_lost(None)
    return Outcome(parse_replies(bytes(transport.written)), transport, logs)


def feed(server: Server, chunks: Sequence[bytes], limits: Limits = LIMITS) -> Outcome:
    return server.run(converse(server.app, chunks, limits))


def split(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    """``data`` cut at the given offsets (clamped, sorted, deduplicated)."""
    points = sorted({min(max(cut, 0), len(data)) for cut in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a] or [data]


def assert_well_behaved(outcome: Outcome) -> None:
    """The properties every conversation has, whatever was sent."""
    assert 0 == outcome.transport.writes_after_close
    for index, reply in enumerate(outcome.replies):
        if reply.status >= 300:
            assert (reply.status, reply.code) in ALLOWED_ERRORS
            assert isinstance(reply.body["error"]["message"], str)
        if reply.code in CLOSING_CODES:
            assert reply.closes, f"{reply.code} must close the connection"
        if reply.closes:
            assert len(outcome.replies) - 1 == index, "a response follows Connection: close"
            assert outcome.transport.closed
    assert not [event for event in outcome.logs if SANDBOX_KEY in repr(event)]


def request(
    method: str, path: str, body: bytes | None = None, headers: Sequence[str] = ()
) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: sidkeyd\r\n"
    if body is not None:
        head += f"Content-Length: {len(body)}\r\n"
    head += "".join(f"{line}\r\n" for line in headers)
    return head.encode("latin-1") + b"\r\n" + (body or b"")


SIGN = request("POST", "/v1/sign", b'{"environment": "sandbox"}')
HEALTH = request("GET", "/v1/health")


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    server = Server()
    yield server
    server.close()


@pytest.fixture
def fresh_server() -> Iterator[Server]:
    server = Server()
    yield server
    server.close()


# -- regressions found by fuzzing --------------------------------------------------------


def test_a_header_line_that_never_ends_is_refused_before_it_ends(server: Server) -> None:
    """A header value sent in pieces without end gets 431 once it outgrows max_header_bytes.

    httptools buffers a header line until it is complete, so counting only complete headers
    let one endless header grow in memory for as long as the read timeout allowed.
    """
    endless = [b"GET /v1/health HTTP/1.1\r\nX-Long: "] + [b"a" * 512] * 64
    outcome = feed(server, endless)
    assert [(431, "headers_too_large")] == [(r.status, r.code) for r in outcome.replies]
    assert outcome.transport.closed


def test_a_header_line_in_many_pieces_within_the_limit_is_accepted(server: Server) -> None:
    """The same header, kept under max_header_bytes, still arrives in pieces and gets 200."""
    pieces = [b"GET /v1/health HTTP/1.1\r\nX-Long: "] + [b"a" * 100] * 9 + [b"\r\n\r\n"]
    outcome = feed(server, pieces)
    assert [200] == [reply.status for reply in outcome.replies]


def test_nothing_is_written_after_a_connection_close_response(server: Server) -> None:
    """Bytes after a ``Connection: close`` request in the same read get no second response."""
    closing = request("GET", "/v1/health", headers=["Connection: close"])
    outcome = feed(server, [closing + SIGN])
    assert [(200, True)] == [(reply.status, reply.closes) for reply in outcome.replies]
    assert (True, 0) == (outcome.transport.closed, outcome.transport.writes_after_close)


@pytest.mark.parametrize(
    "upgrade",
    [
        request("GET", "/v1/health", headers=["Connection: Upgrade", "Upgrade: websocket"]),
        request(
            "POST",
            "/v1/sign",
            b'{"environment": "sandbox"}',
            headers=["Connection: upgrade", "Upgrade: h2c"],
        ),
        b"CONNECT sidkeyd:443 HTTP/1.1\r\nHost: sidkeyd:443\r\n\r\n",
    ],
)
def test_an_upgrade_request_gets_one_refusal_and_is_not_handled(
    server: Server, upgrade: bytes
) -> None:
    """An upgrade is refused before it is handled: one 400 upgrade_not_supported, then close.

    llhttp completes an upgrade request without its body, so it used to be handled (a POST
    as if its body were empty) and then refused: two responses to one request.
    """
    outcome = feed(server, [upgrade])
    assert [(400, "upgrade_not_supported")] == [(r.status, r.code) for r in outcome.replies]
    assert outcome.transport.closed


def test_a_request_left_incomplete_behind_a_slow_response_still_times_out(
    fresh_server: Server,
) -> None:
    """A partial request pipelined behind a slow response gets 408 once that response is out.

    The read timer that fired while the response was pending used to be dropped, so the
    partial request then held the connection open for good.
    """
    server = fresh_server
    limits = Limits(
        max_header_bytes=1024, max_body_bytes=2048, read_timeout_s=0.05, idle_timeout_s=60
    )
    report = request(
        "POST", "/v1/report", b'{"environment": "sandbox", "key_version": "v1", "status": 401}'
    )
    server.source.gate = threading.Event()  # the backend answers only when released
    server.source.entered.clear()

    async def conversation() -> list[Reply]:
        loop = asyncio.get_running_loop()
        transport = FakeTransport()
        protocol = HttpProtocol(server.app, limits, ConnectionTracker(10))
        protocol.connection_made(transport)  # type: ignore[arg-type]
        protocol.data_received(report + b"GET /v1/hea")
        assert await loop.run_in_executor(None, server.source.entered.wait, 10)
        # The input: the backend stays slow for several read timeouts.
        await asyncio.sleep(limits.read_timeout_s * 4)
        server.source.gate.set()
        await asyncio.wait_for(transport.closed_event.wait(), 10)
        protocol.connection_lost(None)
        return parse_replies(bytes(transport.written))

    replies = server.run(conversation())
    assert [(200, None), (408, "request_timeout")] == [(r.status, r.code) for r in replies]
