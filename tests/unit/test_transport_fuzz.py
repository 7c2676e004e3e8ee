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
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from sidkeyd.app import Application
from sidkeyd.config import Config, EnvironmentConfig, FileSourceConfig
from sidkeyd.connections import ConnectionTracker, Limits
from sidkeyd.http import Request
from sidkeyd.transport import HttpProtocol
from support.engine import make_manager
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


ALLOWED_ERRORS = documented_errors()
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
        "too_many_connections_for_uid",
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

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0  # everything written is sent at once

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
        self.manager, _ = make_manager({"fake": self.source}, env)
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
    head: bool = False  # the answer to HEAD: headers only

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
    continues: int = 0  # interim 100 Continue responses

    @property
    def written(self) -> bytes:
        return bytes(self.transport.written)


STATUS_LINE = re.compile(rb"HTTP/1\.1 ([1-5]\d\d) ([A-Za-z' -]+)")
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def parse_replies(data: bytes, methods: Sequence[str] = ()) -> list[Reply]:
    """Strictly split the written bytes into HTTP/1.1 responses with JSON object bodies.

    ``methods``: those of the handled requests, in order, whose answers come first (an
    answer to HEAD has no body); interim ``100 Continue`` responses are skipped.
    """
    replies: list[Reply] = []
    while data:
        if data.startswith(CONTINUE):
            data = data[len(CONTINUE) :]
            continue
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
        if len(replies) < len(methods) and "HEAD" == methods[len(replies)]:
            replies.append(Reply(status, headers, {}, head=True))
            data = rest
            continue
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


def connection(app: Application, limits: Limits, methods: list[str]) -> HttpProtocol:
    """A connection as the server makes one, with room for ten; ``methods`` records what
    was handled."""

    def handle(request: Request) -> Any:
        methods.append(request.method)
        return app.handle(request)

    return HttpProtocol(handle, limits, ConnectionTracker(10), app.rejections)


async def converse(app: Application, chunks: Sequence[bytes], limits: Limits) -> Outcome:
    """Open a connection, feed ``chunks`` one ``data_received`` at a time, let it settle."""
    baseline = asyncio.all_tasks()
    transport = FakeTransport()
    methods: list[str] = []
    protocol = connection(app, limits, methods)
    with capture_logs() as logs:
        protocol.connection_made(transport)  # type: ignore[arg-type]
        for chunk in chunks:
            if transport.closed:
                break  # a closed transport delivers nothing more
            protocol.data_received(chunk)
            await settle(baseline)
        protocol.connection_lost(None)
    written = bytes(transport.written)
    return Outcome(parse_replies(written, methods), transport, logs, written.count(CONTINUE))


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
        if reply.status >= 300 and not reply.head:
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


def test_an_endless_header_line_in_one_chunk_is_refused_too(server: Server) -> None:
    """The whole over-long line arriving in the first chunk gets 431, as when split."""
    line = b"POST /v1/sign HTTP/1.1\r\nContent-Length: 10\r\n" + b"a" * (
        LIMITS.max_header_bytes + 5
    )
    whole = feed(server, [line])
    pieces = feed(server, split(line, [30, 60]))
    assert [(431, "headers_too_large")] == [(r.status, r.code) for r in whole.replies]
    assert [(r.status, r.code) for r in whole.replies] == [
        (r.status, r.code) for r in pieces.replies
    ]


def test_a_newline_free_body_before_a_pipelined_request_is_not_a_header(server: Server) -> None:
    """A long body then the start of the next request, in one chunk: no 431 for the body."""
    body = b'{"environment": "sandbox"' + b" " * (LIMITS.max_header_bytes + 10) + b"}"
    first = request("POST", "/v1/sign", body)
    outcome = feed(server, [first + SIGN[:20], SIGN[20:]])
    assert [200, 200] == [reply.status for reply in outcome.replies]


def test_nothing_is_written_after_a_connection_close_response(server: Server) -> None:
    """Bytes after a ``Connection: close`` request in the same read get no second response."""
    closing = request("GET", "/v1/health", headers=["Connection: close"])
    outcome = feed(server, [closing + SIGN])
    assert [(200, True)] == [(reply.status, reply.closes) for reply in outcome.replies]
    assert (True, 0) == (outcome.transport.closed, outcome.transport.writes_after_close)


def statuses(outcome: Outcome) -> list[tuple[int, str | None]]:
    return [(reply.status, reply.code) for reply in outcome.replies]


UPGRADE_H2C = ["Connection: Upgrade, HTTP2-Settings", "Upgrade: h2c", "HTTP2-Settings: AAMAAABk"]


@pytest.mark.parametrize(
    "upgrade",
    [
        request("GET", "/v1/health", headers=["Connection: Upgrade", "Upgrade: websocket"]),
        request("GET", "/v1/health", headers=UPGRADE_H2C),
        request("POST", "/v1/sign", b'{"environment": "sandbox"}', headers=UPGRADE_H2C),
        request("POST", "/v1/sign", None, [*UPGRADE_H2C, "Transfer-Encoding: chunked"])
        + b'1a\r\n{"environment": "sandbox"}\r\n0\r\n\r\n',
    ],
)
def test_an_upgrade_request_is_served_as_http_1_1(server: Server, upgrade: bytes) -> None:
    """Upgrade (h2c, websocket), with a body or without: one 200, no 101, the connection open."""
    for chunks in ([upgrade], split(upgrade, range(1, len(upgrade)))):
        outcome = feed(server, chunks)
        assert_well_behaved(outcome)
        assert [(200, None)] == statuses(outcome)
        assert not outcome.transport.closed


def test_a_connect_request_is_refused_before_it_is_handled(server: Server) -> None:
    """CONNECT (a tunnel) still gets one 400 upgrade_not_supported, then the close."""
    outcome = feed(server, [b"CONNECT sidkeyd:443 HTTP/1.1\r\nHost: sidkeyd:443\r\n\r\n" + SIGN])
    assert [(400, "upgrade_not_supported")] == statuses(outcome)
    assert outcome.transport.closed


def test_a_request_pipelined_after_an_upgrade_is_parsed_as_the_next_request(
    server: Server,
) -> None:
    """The bytes after an upgrade request are the next HTTP request: answered, not skipped."""
    upgrade = request("POST", "/v1/sign", b'{"environment": "sandbox"}', headers=UPGRADE_H2C)
    pipelined = upgrade + HEALTH + upgrade + SIGN
    for chunks in ([pipelined], split(pipelined, range(7, len(pipelined), 13))):
        outcome = feed(server, chunks)
        assert [(200, "sign"), (200, "health"), (200, "sign"), (200, "sign")] == [
            (reply.status, "sign" if "signature" in reply.body else "health")
            for reply in outcome.replies
        ]


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_the_body_of_an_upgrade_request_cannot_smuggle_a_request(
    server: Server, framing: str
) -> None:
    """An upgrade request's body that reads as a request is its body: one 400 invalid_json.

    llhttp skips the body of an upgrade request, so parsing on from where it stopped would
    have answered the body as a second request, one a front proxy never saw.
    """
    hidden = b"POST /v1/refresh HTTP/1.1\r\nContent-Length: 0\r\n\r\n"
    if framing == "length":
        upgrade = request("POST", "/v1/sign", hidden, headers=UPGRADE_H2C)
    else:
        upgrade = request(
            "POST", "/v1/sign", None, [*UPGRADE_H2C, "Transfer-Encoding: chunked"]
        ) + b"%x\r\n%s\r\n0\r\n\r\n" % (len(hidden), hidden)
    outcome = feed(server, [upgrade + HEALTH])
    assert [(400, "invalid_json"), (200, None)] == statuses(outcome)


def test_an_upgrade_request_keeps_the_framing_rules_of_its_body(server: Server) -> None:
    """An upgrade body with a Transfer-Encoding llhttp refuses is malformed, as without it."""
    upgrade = request("POST", "/v1/sign", None, [*UPGRADE_H2C, "Transfer-Encoding: gzip"])
    plain = request("POST", "/v1/sign", None, ["Transfer-Encoding: gzip"])
    assert statuses(feed(server, [plain + b"abc"])) == statuses(feed(server, [upgrade + b"abc"]))
    assert [(400, "malformed_request")] == statuses(feed(server, [upgrade + b"abc"]))


def expecting(body: bytes, version: str = "HTTP/1.1") -> tuple[bytes, bytes]:
    """A sign request with ``Expect: 100-continue``: (head, body)."""
    head = request("POST", "/v1/sign", body, ["Expect: 100-continue"])[: -len(body)]
    return head.replace(b"HTTP/1.1", version.encode(), 1), body


SIGN_BODY = b'{"environment": "sandbox"}'


def test_expect_100_continue_is_answered_before_the_body_arrives(server: Server) -> None:
    """Headers alone get ``100 Continue``; the body then gets the 200."""
    head, body = expecting(SIGN_BODY)
    waiting = feed(server, [head])
    assert CONTINUE == waiting.written
    outcome = feed(server, [head, body])
    assert CONTINUE == outcome.written[: len(CONTINUE)]
    assert (1, [(200, None)]) == (outcome.continues, statuses(outcome))


def test_expect_100_continue_is_not_owed_once_the_body_came(server: Server) -> None:
    """Headers and body in one read: no interim response, just the 200."""
    head, body = expecting(SIGN_BODY)
    outcome = feed(server, [head + body])
    assert (0, [(200, None)]) == (outcome.continues, statuses(outcome))


def test_a_body_too_large_for_expect_gets_413_instead_of_continue(server: Server) -> None:
    """A Content-Length over max_body_bytes gets the final 413 and the close, no 100."""
    head, _ = expecting(b"x" * (LIMITS.max_body_bytes + 1))
    outcome = feed(server, [head])
    assert (0, [(413, "body_too_large")]) == (outcome.continues, statuses(outcome))
    assert outcome.transport.closed


def test_expect_100_continue_from_http_1_0_gets_no_interim_response(server: Server) -> None:
    """100 Continue is HTTP/1.1: an HTTP/1.0 client waiting with Expect gets none."""
    head, body = expecting(SIGN_BODY, "HTTP/1.0")
    outcome = feed(server, [head, body])
    assert (0, [(200, None)]) == (outcome.continues, statuses(outcome))


def test_expect_100_continue_waits_for_the_responses_before_it(fresh_server: Server) -> None:
    """Behind a response still pending, ``100 Continue`` follows that response: written at
    once, it would have read as the interim answer to the earlier request."""
    server = fresh_server
    report = request(
        "POST", "/v1/report", b'{"environment": "sandbox", "key_version": "v1", "status": 401}'
    )
    head, body = expecting(SIGN_BODY)
    server.source.gate = threading.Event()  # the backend answers only when released
    server.source.entered.clear()

    async def conversation() -> tuple[bytes, bytes, bytes]:
        baseline = asyncio.all_tasks()
        loop = asyncio.get_running_loop()
        transport = FakeTransport()
        protocol = connection(server.app, LIMITS, [])
        protocol.connection_made(transport)  # type: ignore[arg-type]
        protocol.data_received(report + head)
        assert await loop.run_in_executor(None, server.source.entered.wait, 10)
        while_pending = bytes(transport.written)
        server.source.gate.set()
        await settle(baseline)
        after_report = bytes(transport.written)
        protocol.data_received(body)
        await settle(baseline)
        protocol.connection_lost(None)
        return while_pending, after_report, bytes(transport.written)

    while_pending, after_report, written = server.run(conversation())
    assert b"" == while_pending
    assert (True, False) == (after_report.endswith(CONTINUE), after_report.startswith(CONTINUE))
    assert [(200, None), (200, None)] == [(r.status, r.code) for r in parse_replies(written)]


def test_head_gets_the_get_headers_without_a_body(server: Server) -> None:
    """HEAD /v1/health: the GET's status and Content-Length, no body; the connection goes on."""
    get = feed(server, [HEALTH]).replies[0]
    outcome = feed(server, [request("HEAD", "/v1/health") + SIGN])
    head = outcome.replies[0]
    assert (200, get.headers) == (head.status, head.headers)
    assert [True, False] == [reply.head for reply in outcome.replies]
    assert [200, 200] == [reply.status for reply in outcome.replies]


@pytest.mark.parametrize(
    ("connection", "expected"), [("Connection: keep-alive", "keep-alive"), (None, "close")]
)
def test_an_http_1_0_client_gets_keep_alive_only_when_it_asks(
    server: Server, connection: str | None, expected: str
) -> None:
    """HTTP/1.0 with keep-alive: told ``Connection: keep-alive`` and kept; without: closed."""
    health = b"GET /v1/health HTTP/1.0\r\n" + (f"{connection}\r\n".encode() if connection else b"")
    outcome = feed(server, [health + b"\r\n"])
    assert [(200, expected)] == [(r.status, r.headers["connection"]) for r in outcome.replies]
    assert ("close" == expected) == outcome.transport.closed


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
        protocol = HttpProtocol(
            server.app.handle, limits, ConnectionTracker(10), server.app.rejections
        )
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


class SlowReaderTransport(FakeTransport):
    """A peer that reads nothing until ``drain()``: writes pile up as unsent bytes and the
    protocol is paused and resumed at its write buffer limits, as a real transport does."""

    def __init__(self) -> None:
        super().__init__()
        self.protocol: HttpProtocol | None = None
        self.unsent = 0
        self.high = self.low = 0
        self.writing_paused = False

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.high, self.low = high or 0, low or 0

    def get_write_buffer_size(self) -> int:
        return self.unsent

    def write(self, data: bytes) -> None:
        super().write(data)
        self.unsent += len(data)
        if self.unsent > self.high and not self.writing_paused:
            self.writing_paused = True
            assert self.protocol is not None
            self.protocol.pause_writing()

    def drain(self) -> None:
        self.unsent = 0
        if self.writing_paused:
            self.writing_paused = False
            assert self.protocol is not None
            self.protocol.resume_writing()


def test_a_client_that_does_not_read_is_not_read_from_until_it_drains(
    fresh_server: Server,
) -> None:
    """Past the write buffer's high mark nothing more is answered or read; after each drain
    the rest is answered, in order, until every pipelined request has its answer."""
    server = fresh_server
    pipelined = HEALTH * (300 * 1024 // len(HEALTH))  # one large read of small requests
    count = len(pipelined) // len(HEALTH)

    async def conversation() -> tuple[list[int], int, int, bool, bytes]:
        transport = SlowReaderTransport()
        protocol = HttpProtocol(
            server.app.handle, LIMITS, ConnectionTracker(10), server.app.rejections
        )
        transport.protocol = protocol
        protocol.connection_made(transport)  # type: ignore[arg-type]
        protocol.data_received(pipelined)
        answered = [len(parse_replies(bytes(transport.written)))]
        first_unsent, reading_paused = transport.unsent, transport.paused
        drains = 0
        while len(parse_replies(bytes(transport.written))) < count and drains < 1000:
            transport.drain()
            drains += 1
            answered.append(len(parse_replies(bytes(transport.written))))
        protocol.connection_lost(None)
        return answered, transport.high, first_unsent, reading_paused, bytes(transport.written)

    answered, high, first_unsent, reading_paused, written = server.run(conversation())
    replies = parse_replies(written)
    reply_size = len(written) // count
    assert (True, True) == (reading_paused, first_unsent <= high + reply_size)
    assert [200] * count == [reply.status for reply in replies]
    assert all(later > earlier for earlier, later in itertools.pairwise(answered))


# -- strategies ------------------------------------------------------------------------------

PATHS = ["/v1/sign", "/v1/verify", "/v1/report", "/v1/refresh", "/v1/status", "/v1/health"]
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE", "CONNECT"]
HEADER_NAMES = [b"Host", b"Connection", b"Upgrade", b"Expect", b"Content-Type", b"X-Anything"]

huge = st.integers(1, 5000).map(lambda n: b"a" * n)
text_bytes = st.text(max_size=40).map(lambda s: s.encode("utf-8"))
invalid_utf8 = st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xe2\x82", b"\x80\x81"])
token = st.one_of(
    st.binary(max_size=24), text_bytes, invalid_utf8, huge, st.sampled_from([b"", b" ", b"\x00"])
)

values = st.sampled_from(
    [
        b"close",
        b"keep-alive",
        b"upgrade",
        b"Upgrade, close",
        b"websocket",
        b"chunked",
        b"gzip, chunked",
        b"100-continue",
        b"0",
        b"sandbox",
    ]
)

json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
sign_like = st.fixed_dictionaries(
    {"environment": st.sampled_from(["sandbox", "production", "", "sandbox\x00"])},
    optional={
        "timestamp": st.one_of(st.text(max_size=30), st.sampled_from(["2026-11-25T22:04:11Z"])),
        "signature": st.text(max_size=200),
        "key_version": st.sampled_from(["v1", "v0", ""]),
        "status": st.one_of(st.integers(), st.text(max_size=5)),
    },
)
sign_like_bytes = sign_like.map(lambda d: json.dumps(d).encode())
bodies = st.one_of(
    sign_like.map(lambda d: json.dumps(d).encode()),
    json_value.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=64),
    invalid_utf8,
    huge,
)


FLAWS = ["method", "target", "version", "framing", "header", "separator", "end", "size"]


@st.composite
def framed(draw: st.DrawFn) -> bytes:
    """A request, well framed or with one flaw: method, target, version, lengths, headers."""
    flaw = draw(st.sampled_from(["none"] * len(FLAWS) + FLAWS))
    path = draw(st.sampled_from(PATHS))
    right = "GET" if path in ("/v1/status", "/v1/health") else "POST"
    methods = st.sampled_from([right] * 6 + METHODS).map(str.encode)
    method = draw(token if flaw == "method" else methods)
    target = draw(
        st.one_of(
            token,
            st.just(path.encode() + b"?q=1#f"),
            st.sampled_from([b"*", b"http://x/v1/sign", b"//v1/sign", b"/v1/sign/..", b"/%ff"]),
        )
        if flaw == "target"
        else st.just(path.encode())
    )
    good_versions = [b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"]
    bad_versions = [b"HTTP/2.0", b"HTTP/1.1 ", b"", b"HTTX", b"HTTP/1.1\x00"]
    version = draw(st.sampled_from(bad_versions if flaw == "version" else good_versions))
    body = draw(bodies if flaw == "size" else st.one_of(sign_like_bytes, bodies))
    lines = [method + b" " + target + b" " + version]
    framing = draw(
        st.sampled_from(["wrong", "both"] if flaw == "framing" else ["length", "chunked", "none"])
    )
    if framing in ("length", "both"):
        lines.append(b"Content-Length: %d" % len(body))
    if framing == "wrong":
        wrong = [b"-1", b"1x", b"", b"99999999999999999999", b"3", b"+5", b"0x10"]
        lines.append(b"Content-Length: " + draw(st.sampled_from(wrong)))
    if framing in ("chunked", "both"):
        lines.append(b"Transfer-Encoding: chunked")
        sizes = [b"zz", b"%x;e=1" % len(body), b"%x" % (len(body) + 1)]
        size = draw(st.sampled_from(sizes) if flaw == "size" else st.just(b"%x" % len(body)))
        trailer = draw(st.sampled_from([b"", b"T: 1\r\n"]))
        body = size + b"\r\n" + body + b"\r\n0\r\n" + trailer + b"\r\n"
    headers = [
        name + b": " + value
        for name, value in draw(
            st.lists(st.tuples(st.sampled_from(HEADER_NAMES), values), max_size=3)
        )
    ]
    if flaw == "header":
        headers.append(draw(token) + b": " + draw(st.one_of(token, values)))
    if flaw == "separator":
        headers.append(b"X-Sep" + draw(st.sampled_from([b":", b" : ", b"\n", b"", b"\r"])) + b"v")
    lines += draw(st.permutations(headers))
    end = draw(
        st.sampled_from([b"\n\n", b"\r\n", b"\r\r", b"\r\n\n"])
        if flaw == "end"
        else st.just(b"\r\n\r\n")
    )
    return b"\r\n".join(lines) + end + body


def valid_requests() -> st.SearchStrategy[bytes]:
    """Requests that must all get 200, in a variety of legal spellings."""
    sign_body = json.dumps({"environment": "sandbox"}).encode()
    verify_body = json.dumps(
        {"environment": "sandbox", "timestamp": "2026-11-25T22:04:11Z", "signature": "x"}
    ).encode()

    @st.composite
    def one(draw: st.DrawFn) -> bytes:
        extra = draw(
            st.lists(
                st.sampled_from(
                    [
                        "Connection: keep-alive",
                        "content-type: application/json",
                        "X-Request-Id: \tabc ",
                        "Accept: */*",
                        "User-Agent: fuzz/1.0",
                    ]
                ),
                max_size=3,
            )
        )
        kind = draw(st.sampled_from(["sign", "verify", "status", "health", "chunked"]))
        if kind == "sign":
            return request("POST", "/v1/sign", sign_body, extra)
        if kind == "verify":
            return request("POST", "/v1/verify", verify_body, extra)
        if kind == "chunked":
            half = len(sign_body) // 2
            chunked = b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (
                half,
                sign_body[:half],
                len(sign_body) - half,
                sign_body[half:],
            )
            return (
                request("POST", "/v1/sign", None, [*extra, "Transfer-Encoding: chunked"]) + chunked
            )
        path = (
            "/v1/status"
            if kind == "status"
            else draw(st.sampled_from(["/v1/health", "/v1/health?x=1"]))
        )
        return request("GET", path, None, extra)

    return one()


pipelines = st.lists(framed(), min_size=1, max_size=3).map(b"".join)
garbage = st.one_of(pipelines, pipelines, pipelines, st.binary(max_size=300))
# Chunk boundaries: a few random offsets, or one byte at a time over the first 600 bytes.
cuts = st.one_of(st.lists(st.integers(0, 600), max_size=12), st.just(list(range(1, 600))))


# -- properties ------------------------------------------------------------------------------


@FUZZ
@given(data=garbage, at=cuts)
def test_any_bytes_get_well_formed_documented_answers(
    server: Server, data: bytes, at: list[int]
) -> None:
    """Random bytes, split anywhere: only well-formed JSON responses with documented codes."""
    outcome = feed(server, split(data, at))
    for reply in outcome.replies:
        event(f"{reply.status} {reply.code}")
    assert_well_behaved(outcome)


@FUZZ
@given(data=garbage, at=cuts)
def test_the_answers_do_not_depend_on_how_the_bytes_are_split(
    server: Server, data: bytes, at: list[int]
) -> None:
    """Fed whole or in random pieces, a request gets the same statuses and error codes."""
    whole = feed(server, [data])
    pieces = feed(server, split(data, at))
    assert [(r.status, r.code) for r in whole.replies] == [
        (r.status, r.code) for r in pieces.replies
    ]
    assert whole.transport.closed == pieces.transport.closed


@FUZZ
@given(st.lists(valid_requests(), min_size=1, max_size=8), cuts)
def test_valid_requests_on_one_connection_all_get_200(
    server: Server, requests: list[bytes], at: list[int]
) -> None:
    """Valid requests, pipelined and split at random, each get 200, in order; it stays open."""
    outcome = feed(server, split(b"".join(requests), at))
    assert_well_behaved(outcome)
    assert [200] * len(requests) == [reply.status for reply in outcome.replies]
    assert not outcome.transport.closed


@FUZZ
@given(st.lists(valid_requests(), max_size=4), garbage, cuts)
def test_garbage_after_valid_requests_leaves_their_answers_alone(
    server: Server, requests: list[bytes], data: bytes, at: list[int]
) -> None:
    """Valid requests answered before garbage keep their 200s; the garbage only affects itself."""
    outcome = feed(server, split(b"".join(requests) + data, at))
    assert_well_behaved(outcome)
    assert [200] * len(requests) == [reply.status for reply in outcome.replies][: len(requests)]
    after = feed(server, [SIGN])
    assert [200] == [reply.status for reply in after.replies]


@FUZZ
@given(st.lists(valid_requests(), min_size=1, max_size=4), st.sampled_from(["limit", "truncated"]))
def test_a_framing_error_closes_the_connection(
    server: Server, requests: list[bytes], kind: str
) -> None:
    """After a framing error the connection is closed and later requests are not answered."""
    if kind == "limit":
        bad = request("GET", "/v1/health", None, ["X-Big: " + "b" * 2000])
    else:
        bad = b"POST /v1/sign HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
    outcome = feed(server, [b"".join(requests) + bad + SIGN])
    assert_well_behaved(outcome)
    assert [200] * len(requests) == [reply.status for reply in outcome.replies[:-1]]
    assert outcome.replies[-1].code in CLOSING_CODES
    assert outcome.transport.closed


@pytest.mark.parametrize("path", ["/v1/sign", "/v1/verify", "/v1/report"])
def test_deeply_nested_json_is_invalid_json(server: Server, path: str) -> None:
    """A body nested deeper than the JSON decoder recurses is refused as invalid_json."""
    body = b'{"environment": ' + b"[" * 1500 + b"]" * 1500 + b"}"
    limits = Limits(
        max_header_bytes=1024, max_body_bytes=4096, read_timeout_s=60, idle_timeout_s=60
    )
    outcome = feed(server, [request("POST", path, body)], limits)
    assert [(400, "invalid_json")] == [(reply.status, reply.code) for reply in outcome.replies]


def test_requests_received_whole_before_garbage_are_answered_then_the_refusal(
    server: Server,
) -> None:
    """A verify that waits on a check, a sign queued behind it, then bad bytes: 200, 200, 400.

    The requests that arrived whole are answered in order; the refusal comes last, then the
    close (before, the queued sign was dropped and the refusal never sent).
    """
    unmatched = request(
        "POST",
        "/v1/verify",
        b'{"environment": "sandbox", "timestamp": "2026-11-25T22:04:11Z", "signature": "x"}',
    )
    outcome = feed(server, [unmatched + SIGN + b"\x00garbage\r\n\r\n"])
    assert [(200, None), (200, None), (400, "malformed_request")] == [
        (reply.status, reply.code) for reply in outcome.replies
    ]
    assert outcome.transport.closed
