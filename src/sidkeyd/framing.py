"""Bytes in, requests out: HTTP/1.1 framing with httptools' llhttp, and its size limits.

``RequestReader.feed()`` parses what a connection received and hands each complete request to
``on_request``; a request that cannot be framed raises ``FramingError`` (status, code,
message), after which the connection must be answered and closed. The state of the message
being parsed lives in one ``_Message``, made at its first byte and dropped whole when it is
complete or refused.

Upgrades: llhttp ends an upgrade request at its head (skipping any body) and hands the rest
of the bytes to the new protocol. sidkeyd speaks only HTTP/1.1, so an upgrade request is
served as a plain one: the bytes after it are parsed by a fresh parser, first as its body
(framed by its own ``Content-Length`` / ``Transfer-Encoding``, exactly as without the
upgrade), then as the next request. No byte is skipped, so a body cannot be smuggled in as a
request. ``CONNECT`` stays refused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import httptools

from sidkeyd.errors import FramingError
from sidkeyd.log import get_logger

# (method, path, body, keep_alive, http_1_0) of a complete request; http_1_0: an HTTP/1.0
# client, whose keep-alive must be announced to be kept. Positional: it runs per request.
OnRequest = Callable[[str, str, bytes, bool, bool], None]


@dataclass(slots=True)
class _Message:
    url: bytes = b""
    header_bytes: int = 0
    body: list[bytes] = field(default_factory=list)
    body_bytes: int = 0
    has_length: bool = False
    in_head: bool = True  # until the headers are complete
    # The framing headers' values as sent, to frame the body of an upgrade request.
    content_length: bytes | None = None
    transfer_encoding: bytes | None = None
    declares_body: bool = False  # a non-zero Content-Length or a Transfer-Encoding
    expects_continue: bool = False  # Expect: 100-continue
    # Known once the headers are complete (the parser that read them may be replaced).
    method: str = ""
    keep_alive: bool = False
    http_1_0: bool = False
    upgrade_body: bool = False  # an upgrade request whose body follows the pause


_EXPECT_CONTINUE = b"100-continue"


class RequestReader:
    def __init__(
        self,
        max_header_bytes: int,
        max_body_bytes: int,
        on_begin: Callable[[], None],
        on_request: OnRequest,
    ) -> None:
        self._max_header_bytes = max_header_bytes
        self._max_body_bytes = max_body_bytes
        self._on_begin = on_begin
        self._on_request = on_request
        self._parser = httptools.HttpRequestParser(self)
        self._message: _Message | None = None  # None between messages
        self._partial_line = 0  # bytes of a head line httptools holds until it is complete
        self._chunk_body_bytes = 0  # body bytes parsed from the chunk being fed
        self._synthetic_head = False  # the parser is reading a head made here (see feed)
        # An HTTP/1.1 request asked for ``100 Continue`` and none of its body has arrived.
        self.awaiting_continue = False

    @property
    def in_message(self) -> bool:
        """A request has begun and is not complete: the read timeout applies."""
        return self._message is not None

    def continue_sent(self) -> None:
        self.awaiting_continue = False

    def abandon(self) -> None:
        """Forget the message in progress (the connection is being closed)."""
        self._message = None
        self.awaiting_continue = False

    def feed(self, data: bytes) -> None:
        self._chunk_body_bytes = 0
        rest = b""
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            rest = self._after_upgrade(data[upgrade.args[0] :])
        except httptools.HttpParserError as exc:
            raise _refusal(exc) from None
        # Outside the except block: a callback's error raised while handling the upgrade would
        # take it as its context, and be taken for a bug.
        while rest:
            rest = self._parse(rest)
        message = self._message
        if message is not None and message.in_head:
            self._check_partial_line(data)
        else:
            self._partial_line = 0

    def _parse(self, data: bytes) -> bytes:
        """Parse ``data``; after an upgrade request, what is left for a fresh parser."""
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            return self._after_upgrade(data[upgrade.args[0] :])
        except httptools.HttpParserError as exc:
            raise _refusal(exc) from None
        return b""

    def _after_upgrade(self, rest: bytes) -> bytes:
        """The upgrade request was HTTP/1.1 all along: parse on from where llhttp stopped.

        Its body, if it declared one, is framed by a head that repeats only its framing
        headers, so that the body is read exactly as it would be without ``Upgrade``.
        """
        self._parser = httptools.HttpRequestParser(self)
        message = self._message
        if message is None:
            return rest
        self._synthetic_head = True
        framing = b""
        if message.content_length is not None:
            framing += b"Content-Length: " + message.content_length + b"\r\n"
        if message.transfer_encoding is not None:
            framing += b"Transfer-Encoding: " + message.transfer_encoding + b"\r\n"
        return b"POST / HTTP/1.1\r\n" + framing + b"\r\n" + rest

    def _check_partial_line(self, data: bytes) -> None:
        """Bound a head line still arriving: httptools reports it only once complete.

        The length since the last newline is the same however the bytes were split.
        """
        newline = data.rfind(b"\n")
        if newline < 0:
            self._partial_line += len(data)
        else:
            # A pipelined body without a newline may stand between that newline and this
            # message's first byte; its bytes are not part of the line.
            tail = len(data) - newline - 1
            self._partial_line = max(0, tail - self._chunk_body_bytes)
        if self._partial_line > self._max_header_bytes:
            raise self._headers_too_large()

    # -- parser callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._synthetic_head:
            return
        self._message = _Message()
        self._on_begin()

    # The callbacks below run for every request: the message is read inline, not through a
    # helper (llhttp calls back only inside a message, which on_message_begin made).

    def on_url(self, url: bytes) -> None:
        message = self._message
        if self._synthetic_head or message is None:
            return
        message.url += url
        message.header_bytes += len(url)
        if message.header_bytes > self._max_header_bytes:
            raise self._headers_too_large()

    def on_header(self, name: bytes, value: bytes) -> None:
        message = self._message
        if self._synthetic_head or message is None:
            return
        message.header_bytes += len(name) + len(value)
        if message.header_bytes > self._max_header_bytes:
            raise self._headers_too_large()
        lowered = name.lower()
        if lowered == b"content-length":
            message.has_length = True
            message.content_length = value
            if value.strip().isdigit():
                if int(value) > self._max_body_bytes:
                    raise self._body_too_large()
                message.declares_body = message.declares_body or int(value) > 0
        elif lowered == b"transfer-encoding":
            message.has_length = True
            message.transfer_encoding = value
            message.declares_body = True
        elif lowered == b"expect":
            message.expects_continue = value.strip().lower() == _EXPECT_CONTINUE

    def on_headers_complete(self) -> None:
        message = self._message
        if self._synthetic_head or message is None:
            self._synthetic_head = False
            return
        parser = self._parser
        message.in_head = False
        message.method = parser.get_method().decode("ascii", "replace")
        message.keep_alive = parser.should_keep_alive()
        message.http_1_0 = parser.get_http_version() == "1.0"
        if parser.should_upgrade():
            # A tunnel is no HTTP request to serve: refused before it is handled.
            if message.method == "CONNECT":
                raise FramingError(400, "upgrade_not_supported", "CONNECT is not supported")
            message.upgrade_body = message.declares_body
        # A 100 Continue is an HTTP/1.1 interim response, owed only when a body is coming.
        if message.expects_continue:
            self.awaiting_continue = message.declares_body and not message.http_1_0

    def on_body(self, body: bytes) -> None:
        message = self._message
        if message is None:
            return
        self.awaiting_continue = False
        message.body_bytes += len(body)
        self._chunk_body_bytes += len(body)
        if message.body_bytes > self._max_body_bytes:
            raise self._body_too_large()
        message.body.append(body)

    def on_message_complete(self) -> None:
        message = self._message
        if message is None:
            return
        if message.upgrade_body:
            message.upgrade_body = False  # llhttp skipped the body: it is read after the pause
            return
        self._message = None
        self.awaiting_continue = False
        method = message.method
        try:
            path = httptools.parse_url(message.url).path.decode("utf-8")
        except (httptools.HttpParserInvalidURLError, UnicodeDecodeError):
            raise FramingError(
                400, "malformed_request", "request target is not a valid path"
            ) from None
        if method in ("POST", "PUT", "PATCH") and not message.has_length:
            raise FramingError(411, "length_required", "a request body needs Content-Length")
        body = b"".join(message.body)
        self._on_request(method, path, body, message.keep_alive, message.http_1_0)

    # -- limits --------------------------------------------------------------------------

    def _headers_too_large(self) -> FramingError:
        limit = self._max_header_bytes
        return FramingError(431, "headers_too_large", f"request headers are over {limit} bytes")

    def _body_too_large(self) -> FramingError:
        limit = self._max_body_bytes
        return FramingError(413, "body_too_large", f"request body is over {limit} bytes")


def _refusal(exc: httptools.HttpParserError) -> FramingError:
    """The FramingError for what llhttp raised (a callback's own, or its parse error)."""
    if isinstance(exc, httptools.HttpParserCallbackError):
        # httptools wraps what a callback raised; the original is the context.
        cause = exc.__context__
        if isinstance(cause, FramingError):
            return cause
        get_logger().error("request.failed", error=repr(cause))
        return FramingError(500, "internal_error", "the daemon failed to handle the request")
    return FramingError(400, "malformed_request", f"malformed HTTP request: {exc}")
