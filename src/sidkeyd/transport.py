"""HTTP/1.1 over the Unix socket: an ``asyncio.Protocol`` around httptools' llhttp parser.

Thin by design: framing, limits, timeouts, pipelining, keep-alive and backpressure live here;
what a request means lives in ``app``. Peer credentials are read once per connection.

Backpressure: a connection whose unsent responses pass ``WRITE_BUFFER_HIGH`` stops being read
and dispatched until they drain below ``WRITE_BUFFER_LOW``, so what a client that never reads
costs is bounded; if they do not drain within ``write_timeout`` the connection is aborted.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import cast

import httptools

from sidkeyd.app import Application
from sidkeyd.http import Request, Response, encode_response, error_response
from sidkeyd.log import get_logger
from sidkeyd.peer import UNKNOWN_PEER, Peer, read_peer_credentials

MAX_PIPELINED = 32
# Unsent response bytes per connection: above HIGH the connection is neither read nor
# dispatched for; it resumes below LOW. A sign response is ~250 bytes.
WRITE_BUFFER_HIGH = 64 * 1024
WRITE_BUFFER_LOW = 16 * 1024
# A larger read is parsed a slice at a time, so that requests stop being parsed (and queued)
# as soon as the connection is backlogged; the rest waits, bounded by one read.
FEED_SLICE = 16 * 1024


@dataclass(frozen=True)
class Limits:
    max_header_bytes: int
    max_body_bytes: int
    read_timeout_s: float
    idle_timeout_s: float
    write_timeout_s: float = 10.0


class ConnectionTracker:
    """The server's view of its open connections, for limits and graceful shutdown."""

    def __init__(self, max_connections: int, max_connections_per_uid: int | None = None) -> None:
        self.max_connections = max_connections
        self.max_connections_per_uid = max_connections_per_uid or max_connections
        self.connections: set[HttpProtocol] = set()
        self._per_uid: Counter[int] = Counter()
        self.closing = False
        self.drained = asyncio.Event()
        self.drained.set()

    def refusal(self, peer: Peer) -> tuple[str, str] | None:
        """Why a new connection from ``peer`` must be refused, as (code, message), or None."""
        if self.closing or len(self.connections) >= self.max_connections:
            return "too_many_connections", "connection limit reached"
        if self._per_uid[peer.uid] >= self.max_connections_per_uid:
            return "too_many_connections_for_uid", "connection limit for this uid reached"
        return None

    def add(self, protocol: HttpProtocol) -> None:
        self.connections.add(protocol)
        self._per_uid[protocol.peer.uid] += 1
        self.drained.clear()

    def remove(self, protocol: HttpProtocol) -> None:
        if protocol not in self.connections:
            return  # a refused connection was never added
        self.connections.remove(protocol)
        uid = protocol.peer.uid
        self._per_uid[uid] -= 1
        if not self._per_uid[uid]:
            del self._per_uid[uid]
        if not self.connections:
            self.drained.set()

    def shutdown(self) -> None:
        """Close idle connections now; busy ones close after their current response."""
        self.closing = True
        for protocol in list(self.connections):
            protocol.close_when_idle()

    def abort(self) -> None:
        for protocol in list(self.connections):
            protocol.abort()


class _Refused(Exception):
    """Raised from parser callbacks: the request cannot be handled and framing is lost."""

    def __init__(self, status: int, code: str, message: str) -> None:
        self.status, self.code, self.message = status, code, message
        super().__init__(message)


class HttpProtocol(asyncio.Protocol):
    def __init__(self, app: Application, limits: Limits, tracker: ConnectionTracker) -> None:
        self._app = app
        self._limits = limits
        self._tracker = tracker
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._peer: Peer = UNKNOWN_PEER
        self._queue: deque[tuple[Request, bool]] = deque()
        self._busy = False
        self._closing = False
        self._eof = False  # the client half-closed: answer what it sent, then close
        self._write_paused = False  # unsent responses are over WRITE_BUFFER_HIGH
        self._held: memoryview | None = None  # received, not yet parsed (see FEED_SLICE)
        self._write_timer: asyncio.TimerHandle | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = 0.0
        # The timer never sleeps longer than the shortest timeout, so re-arming is a store.
        self._tick = min(limits.read_timeout_s, limits.idle_timeout_s)
        self._partial_line = 0  # bytes of a head line httptools holds until it is complete
        self._chunk_body_bytes = 0  # body bytes parsed from the chunk being fed
        self._log = get_logger()
        self._reset_message()

    def _reset_message(self) -> None:
        self._url = b""
        self._header_bytes = 0
        self._body: list[bytes] = []
        self._body_bytes = 0
        self._has_length = False
        self._in_message = False
        self._in_head = False  # between message begin and headers complete

    # -- connection events ---------------------------------------------------------------

    @property
    def peer(self) -> Peer:
        return self._peer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast("asyncio.Transport", transport)  # uvloop's is not a subclass
        self._transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH, low=WRITE_BUFFER_LOW)
        self._peer = read_peer_credentials(transport.get_extra_info("socket"))
        refusal = self._tracker.refusal(self._peer)
        if refusal is not None:
            code, message = refusal
            self._log.warning("request.rejected", reason=code, **self._peer.log_fields())
            self._transport.write(
                encode_response(error_response(503, code, message), keep_alive=False)
            )
            self._close()
            return
        self._tracker.add(self)
        self._arm_timer(self._limits.idle_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        self._cancel_write_timer()
        self._tracker.remove(self)
        self._transport = None
        self._held = None

    def eof_received(self) -> bool:
        """The client shut down its sending side: answer what it sent, then close.

        Returning True keeps the transport open for the responses still to come (an awaited
        route's, and those pipelined behind it); the close follows the last one.
        """
        self._eof = True
        self._closing = True
        if not self._busy and not self._queue and self._transport is not None:
            self._close()
        return True

    def pause_writing(self) -> None:
        """Unsent responses passed WRITE_BUFFER_HIGH: stop reading and dispatching."""
        self._write_paused = True
        self._update_reading()
        self._arm_write_timer()

    def resume_writing(self) -> None:
        """Below WRITE_BUFFER_LOW again: answer what is queued, then parse and read on."""
        self._write_paused = False
        self._cancel_write_timer()
        transport = self._transport
        if transport is None:
            return
        if transport.is_closing():
            if transport.get_write_buffer_size():
                self._arm_write_timer()  # what is left must drain in time too
            return
        if not self._busy:
            self._run_queue()
        self._feed_held()

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        # No timer is armed here: bytes between requests (stray CRLFs, which the parser
        # skips) must not keep an idle connection open; on_message_begin arms the read timer.
        if self._held is None and len(data) <= FEED_SLICE:
            self._feed(data)
            return
        held = bytes(self._held) + data if self._held is not None else data
        self._held = memoryview(held)
        self._feed_held()

    def _feed_held(self) -> None:
        """Parse held bytes a slice at a time while the connection is not backlogged."""
        while self._held is not None and not self._backlogged():
            piece, rest = self._held[:FEED_SLICE], self._held[FEED_SLICE:]
            self._held = rest if len(rest) else None
            self._feed(bytes(piece))
        self._update_reading()

    def _backlogged(self) -> bool:
        return (
            self._write_paused
            or len(self._queue) > MAX_PIPELINED
            or self._closing
            or self._transport is None
        )

    def _update_reading(self) -> None:
        """Read only while nothing is held back; unread bytes wait in the kernel's buffer."""
        if self._transport is None or self._eof:
            return
        if self._held is not None or self._write_paused or len(self._queue) > MAX_PIPELINED:
            self._transport.pause_reading()
        else:
            self._transport.resume_reading()

    def _feed(self, data: bytes) -> None:
        self._chunk_body_bytes = 0
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            # httptools wraps what a callback raised; the original is the context.
            cause = exc.__context__
            if isinstance(cause, _Refused):
                self._fail(cause.status, cause.code, cause.message)
            else:
                self._log.error("request.failed", error=repr(cause))
                self._fail(500, "internal_error", "the daemon failed to handle the request")
        except httptools.HttpParserUpgrade:
            self._fail(400, "upgrade_not_supported", "protocol upgrades are not supported")
        except httptools.HttpParserError as exc:
            self._fail(400, "malformed_request", f"malformed HTTP request: {exc}")
        else:
            self._check_partial_line(data)

    def _check_partial_line(self, data: bytes) -> None:
        """Bound a head line still arriving: httptools reports it only once complete.

        The length since the last newline is the same however the bytes were split.
        """
        if not self._in_head:
            self._partial_line = 0
            return
        newline = data.rfind(b"\n")
        if newline < 0:
            self._partial_line += len(data)
        else:
            # A pipelined body without a newline may stand between that newline and this
            # message's first byte; its bytes are not part of the line.
            tail = len(data) - newline - 1
            self._partial_line = max(0, tail - self._chunk_body_bytes)
        if self._partial_line > self._limits.max_header_bytes:
            limit = self._limits.max_header_bytes
            self._fail(431, "headers_too_large", f"request headers are over {limit} bytes")

    # -- parser callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._reset_message()
        self._in_message = True
        self._in_head = True
        self._arm_timer(self._limits.read_timeout_s)

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count_header_bytes(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_header_bytes(len(name) + len(value))
        lowered = name.lower()
        if lowered == b"content-length":
            self._has_length = True
            if value.strip().isdigit() and int(value) > self._limits.max_body_bytes:
                raise self._too_large()
        elif lowered == b"transfer-encoding":
            self._has_length = True

    def on_headers_complete(self) -> None:
        self._in_head = False
        # Refused here, before the request is handled: llhttp would complete an upgrade
        # request without its body and leave the rest of the bytes to the new protocol.
        if self._parser.should_upgrade():
            raise _Refused(400, "upgrade_not_supported", "protocol upgrades are not supported")

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        self._chunk_body_bytes += len(body)
        if self._body_bytes > self._limits.max_body_bytes:
            raise self._too_large()
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._in_message = False
        method = self._parser.get_method().decode("ascii", "replace")
        try:
            path = httptools.parse_url(self._url).path.decode("utf-8")
        except (httptools.HttpParserInvalidURLError, UnicodeDecodeError):
            raise _Refused(400, "malformed_request", "request target is not a valid path") from None
        keep_alive = self._parser.should_keep_alive()
        if method in ("POST", "PUT", "PATCH") and not self._has_length:
            raise _Refused(411, "length_required", "a request body needs Content-Length")
        request = Request(method, path, b"".join(self._body), self._peer)
        self._queue.append((request, keep_alive))
        if len(self._queue) > MAX_PIPELINED and self._transport is not None:
            self._transport.pause_reading()
        if not self._busy:
            self._run_queue()

    # -- dispatch ------------------------------------------------------------------------

    def _run_queue(self) -> None:
        while self._queue and not (self._busy or self._write_paused or self._transport is None):
            request, keep_alive = self._queue.popleft()
            result = self._app.handle(request)
            if isinstance(result, Response):
                self._send(result, keep_alive)
            else:
                self._busy = True
                self._loop.create_task(self._finish(result, keep_alive))
                return
        if self._transport is not None and not self._queue:
            self._update_reading()
            if self._closing:
                self._close()
            elif not self._in_message:
                self._arm_timer(self._limits.idle_timeout_s)
            elif self._timer is None:
                self._on_timeout()  # the read timeout passed while a response was pending

    async def _finish(self, pending: Awaitable[Response], keep_alive: bool) -> None:
        try:
            response = await pending
        except Exception:
            self._log.exception("request.failed")
            response = error_response(500, "internal_error", "the daemon failed to answer")
        self._busy = False
        self._send(response, keep_alive)
        self._run_queue()
        self._feed_held()

    def _send(self, response: Response, keep_alive: bool) -> None:
        if self._transport is None or self._transport.is_closing():
            return  # a response with Connection: close was the last one
        keep_alive = keep_alive and not response.close and not self._tracker.closing
        self._transport.write(encode_response(response, keep_alive=keep_alive))
        if not keep_alive:
            self._queue.clear()
            self._close()

    def _close(self) -> None:
        """Close once the unsent responses are out, but wait for them write_timeout at most."""
        assert self._transport is not None
        self._closing = True
        self._transport.close()
        if self._transport.get_write_buffer_size():
            self._arm_write_timer()

    def _fail(self, status: int, code: str, message: str) -> None:
        """Framing is lost: answer if we can, then close."""
        self._log.info("request.rejected", status=status, reason=code, **self._peer.log_fields())
        self._in_message = False
        if self._busy:
            self._closing = True  # the pending response goes out first, then the close
            self._queue.clear()
            return
        self._queue.clear()
        self._send(error_response(status, code, message, close=True), keep_alive=False)

    def _too_large(self) -> _Refused:
        limit = self._limits.max_body_bytes
        return _Refused(413, "body_too_large", f"request body is over {limit} bytes")

    def _count_header_bytes(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > self._limits.max_header_bytes:
            limit = self._limits.max_header_bytes
            raise _Refused(431, "headers_too_large", f"request headers are over {limit} bytes")

    # -- timers and shutdown -------------------------------------------------------------

    def _arm_timer(self, seconds: float) -> None:
        self._deadline = self._loop.time() + seconds
        if self._timer is None:
            self._timer = self._loop.call_later(self._tick, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        left = self._deadline - self._loop.time()
        if left > 0:
            self._timer = self._loop.call_later(min(self._tick, left), self._on_timer)
        else:
            self._on_timeout()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timeout(self) -> None:
        self._timer = None
        # While responses cannot be sent, the write timer decides; the read and idle timers
        # are re-armed when dispatch resumes.
        if self._transport is None or self._busy or self._write_paused:
            return
        if self._in_message:
            self._fail(408, "request_timeout", "request not received in time")
        else:
            self._log.debug("connection.closed", reason="idle_timeout", **self._peer.log_fields())
            self._close()

    def _arm_write_timer(self) -> None:
        if self._write_timer is None:
            self._write_timer = self._loop.call_later(
                self._limits.write_timeout_s, self._on_write_timeout
            )

    def _cancel_write_timer(self) -> None:
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _on_write_timeout(self) -> None:
        """Unsent responses did not drain in time: the client is not reading. Free the slot."""
        self._write_timer = None
        if self._transport is None:
            return
        self._log.warning(
            "connection.closed",
            reason="write_timeout",
            unsent_bytes=self._transport.get_write_buffer_size(),
            **self._peer.log_fields(),
        )
        self._closing = True
        self._queue.clear()
        self._transport.abort()

    def close_when_idle(self) -> None:
        self._closing = True
        if not self._busy and not self._in_message and self._transport is not None:
            self._close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()
