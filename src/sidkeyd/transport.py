"""HTTP/1.1 over the Unix socket: an ``asyncio.Protocol`` around httptools' llhttp parser.

Thin by design: flow (pipelining, keep-alive, backpressure, half-close), timeouts and the
connection caps live here; framing and its size limits are ``framing.RequestReader``; what a
request means is the ``Handler``'s (``app.Application.handle``). Peer credentials are read once
per connection.

Backpressure: a connection whose unsent responses pass ``WRITE_BUFFER_HIGH`` stops being read
and dispatched until they drain below ``WRITE_BUFFER_LOW``, so what a client that never reads
costs is bounded; if they do not drain within ``write_timeout`` the connection is aborted.
"""

from __future__ import annotations

import asyncio
import functools
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, cast

from sidkeyd.connections import ConnectionTracker, Limits
from sidkeyd.deadline import Deadline
from sidkeyd.errors import FramingError
from sidkeyd.framing import RequestReader
from sidkeyd.http import CONTINUE, Request, Response, encode_response, error_response
from sidkeyd.log import get_logger
from sidkeyd.peer import UNKNOWN_PEER, Peer, read_peer_credentials

__all__ = ["ConnectionTracker", "Handler", "HttpProtocol", "Limits", "Rejections"]

# What answers a request (``app.Application.handle``): a response, or an awaitable of one for
# the routes that wait on a backend.
Handler = Callable[[Request], Response | Awaitable[Response]]


class Rejections(Protocol):
    """Where refused requests are recorded (``rejections.RejectionLog``)."""

    def reject(self, status: int, reason: str, **fields: Any) -> None: ...


MAX_PIPELINED = 32
# Unsent response bytes per connection: above HIGH the connection is neither read nor
# dispatched for; it resumes below LOW. A sign response is ~250 bytes.
WRITE_BUFFER_HIGH = 64 * 1024
WRITE_BUFFER_LOW = 16 * 1024
# A larger read is parsed a slice at a time, so that requests stop being parsed (and queued)
# as soon as the connection is backlogged; the rest waits, bounded by one read.
FEED_SLICE = 16 * 1024


# A parsed request and how its answer must be framed: (request, keep_alive, http_1_0, head).
# A plain tuple, not a class: one is made for every request. http_1_0: keep-alive must be
# announced to be kept; head: the answer goes without its body.
_Exchange = tuple[Request, bool, bool, bool]


class HttpProtocol(asyncio.Protocol):
    def __init__(
        self, handle: Handler, limits: Limits, tracker: ConnectionTracker, rejections: Rejections
    ) -> None:
        # For the connection's lifetime.
        self._handle = handle
        self._limits = limits
        self._tracker = tracker
        self._rejections = rejections
        self._loop = asyncio.get_running_loop()
        # Timers: one for read and idle (it wakes at least as often as the shorter of the two),
        # one for responses that do not drain.
        tick = min(limits.read_timeout_s, limits.idle_timeout_s)
        self._read_idle = Deadline(self._loop, tick, self._on_timeout)
        self._write_drain = Deadline(self._loop, limits.write_timeout_s, self._on_write_timeout)
        # A request's first byte starts its read timeout (a partial: no Python frame per call).
        began = functools.partial(self._read_idle.move, limits.read_timeout_s)
        self._reader = RequestReader(
            limits.max_header_bytes, limits.max_body_bytes, began, self._received
        )
        self._transport: asyncio.Transport | None = None
        self._peer: Peer = UNKNOWN_PEER
        self._log = get_logger()
        # Flow: what may be read, answered, and when the connection ends.
        self._closing = False
        self._eof = False  # the client half-closed: answer what it sent, then close
        self._write_paused = False  # unsent responses are over WRITE_BUFFER_HIGH
        self._held: memoryview | None = None  # received, not yet parsed (see FEED_SLICE)
        self._reading = True  # the transport is not paused
        # Dispatch: parsed requests waiting, and whether one is being answered off the loop.
        # A Response in the queue is a refusal made while reading: sent in its turn.
        self._queue: deque[_Exchange | Response] = deque()
        self._busy = False

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
            self._rejections.reject(503, code, **self._peer.log_fields())
            self._transport.write(
                encode_response(error_response(503, code, message), keep_alive=False)
            )
            self._close()
            return
        self._tracker.add(self)
        self._read_idle.move(self._limits.idle_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._read_idle.cancel()
        self._write_drain.cancel()
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
        self._write_drain.start(self._limits.write_timeout_s)

    def resume_writing(self) -> None:
        """Below WRITE_BUFFER_LOW again: answer what is queued, then parse and read on."""
        self._write_paused = False
        self._write_drain.cancel()
        transport = self._transport
        if transport is None:
            return
        if transport.is_closing():
            if transport.get_write_buffer_size():  # what is left must drain in time too
                self._write_drain.start(self._limits.write_timeout_s)
            return
        if not self._busy:
            self._run_queue()
        self._feed_held()

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        # No timer is armed here: bytes between requests (stray CRLFs, which the parser
        # skips) must not keep an idle connection open; the start of a request arms it.
        if (
            self._held is None
            and len(data) <= FEED_SLICE
            and not (self._busy or self._write_paused or len(self._queue) > MAX_PIPELINED)
        ):  # the common case, _backlogged() inline: one small read, nothing waiting
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
        # While a request waits on a backend (busy), what follows it stays unparsed: parsed, it
        # would be queued with its body, and a client could pile up MAX_PIPELINED bodies.
        return (
            self._busy
            or self._write_paused
            or len(self._queue) > MAX_PIPELINED
            or self._closing
            or self._transport is None
        )

    def _update_reading(self) -> None:
        """Read only while nothing is held back; unread bytes wait in the kernel's buffer."""
        if self._transport is None or self._eof:
            return
        if (
            self._held is not None
            or self._busy
            or self._write_paused
            or len(self._queue) > MAX_PIPELINED
        ):
            self._set_reading(False)
        else:
            self._set_reading(True)

    def _set_reading(self, reading: bool) -> None:
        """Pause or resume the transport, only when that changes (this runs per request)."""
        if reading != self._reading and self._transport is not None:
            self._reading = reading
            if reading:
                self._transport.resume_reading()
            else:
                self._transport.pause_reading()

    def _feed(self, data: bytes) -> None:
        try:
            self._reader.feed(data)
        except FramingError as refused:
            self._fail(refused.status, refused.code, refused.message)
            return
        self._send_continue_if_due()

    def _send_continue_if_due(self) -> None:
        """Answer ``Expect: 100-continue`` once every earlier response is out, in order.

        Not owed once the body has begun to arrive (the reader clears it then); a request
        refused from its headers (too large) gets its final 4xx instead.
        """
        if (
            self._reader.awaiting_continue
            and not (self._busy or self._queue)
            and self._transport is not None
            and not self._transport.is_closing()
        ):
            self._reader.continue_sent()
            self._transport.write(CONTINUE)

    # -- from the reader -----------------------------------------------------------------

    def _received(
        self, method: str, path: str, body: bytes, keep_alive: bool, http_1_0: bool
    ) -> None:
        request = Request(method, path, body, self._peer)
        self._queue.append((request, keep_alive, http_1_0, method == "HEAD"))
        if len(self._queue) > MAX_PIPELINED and self._transport is not None:
            self._set_reading(False)
        if not self._busy:
            self._run_queue()

    # -- dispatch ------------------------------------------------------------------------

    def _run_queue(self) -> None:
        while self._queue and not (self._busy or self._write_paused or self._transport is None):
            exchange = self._queue.popleft()
            if isinstance(exchange, Response):
                self._send(exchange, None)  # a refusal: the last answer on this connection
                continue
            result = self._handle(exchange[0])
            if isinstance(result, Response):
                self._send(result, exchange)
            else:
                self._busy = True
                self._update_reading()  # what follows waits in the kernel's buffer
                self._loop.create_task(self._finish(result, exchange))
                return
        if self._transport is not None and not self._queue:
            if not self._reading:  # reading stays on unless something held it back
                self._update_reading()
            if self._closing:
                self._close()
            elif not self._reader.in_message:
                self._read_idle.move(self._limits.idle_timeout_s)
            elif not self._read_idle.running:
                self._on_timeout()  # the read timeout passed while a response was pending
            elif self._reader.awaiting_continue:
                self._send_continue_if_due()

    async def _finish(self, pending: Awaitable[Response], exchange: _Exchange) -> None:
        try:
            response = await pending
        except Exception:
            self._log.exception("request.failed")
            response = error_response(500, "internal_error", "the daemon failed to answer")
        self._busy = False
        self._send(response, exchange)
        self._run_queue()
        self._feed_held()

    def _send(self, response: Response, exchange: _Exchange | None) -> None:
        """Write ``response`` to ``exchange`` (None: to a request that could not be framed)."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return  # a response with Connection: close was the last one
        if exchange is None:
            transport.write(encode_response(response, keep_alive=False))
            keep_alive = False
        else:
            _request, asked, http_1_0, head = exchange
            keep_alive = asked and not response.close and not self._tracker.closing
            transport.write(
                encode_response(
                    response, keep_alive=keep_alive, announce_keep_alive=http_1_0, omit_body=head
                )
            )
        if not keep_alive:
            self._queue.clear()
            self._close()

    def _close(self) -> None:
        """Close once the unsent responses are out, but wait for them write_timeout at most."""
        assert self._transport is not None
        self._closing = True
        self._transport.close()
        if self._transport.get_write_buffer_size():
            self._write_drain.start(self._limits.write_timeout_s)

    def _fail(self, status: int, code: str, message: str) -> None:
        """Framing is lost: answer if we can, then close."""
        self._rejections.reject(status, code, **self._peer.log_fields())
        self._reader.abandon()
        # Requests received whole before the bad bytes are still answered, in order (behind a
        # pending or write-paused one too); the refusal goes last, then the close.
        self._closing = True
        self._queue.append(error_response(status, code, message, close=True))
        if not self._busy:
            self._run_queue()

    # -- timers and shutdown -------------------------------------------------------------

    def _on_timeout(self) -> None:
        # While responses cannot be sent, the write timer decides; the read and idle timers
        # are re-armed when dispatch resumes.
        if self._transport is None or self._busy or self._write_paused:
            return
        if self._reader.in_message:
            self._fail(408, "request_timeout", "request not received in time")
        else:
            self._log.debug("connection.closed", reason="idle_timeout", **self._peer.log_fields())
            self._close()

    def _on_write_timeout(self) -> None:
        """Unsent responses did not drain in time: the client is not reading. Free the slot."""
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
        if not self._busy and not self._reader.in_message and self._transport is not None:
            self._close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()
