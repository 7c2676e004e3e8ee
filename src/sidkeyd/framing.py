"""Bytes in, requests out: HTTP/1.1 framing with httptools' llhttp, and its size limits.

``RequestReader.feed()`` parses what a connection received and hands each complete request to
``on_request``; a request that cannot be framed raises ``FramingError`` (status, code,
message), after which the connection must be answered and closed. The state of the message
being parsed lives in one ``_Message``, made at its first byte and dropped whole when it is
complete or refused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import httptools

from sidkeyd.errors import FramingError
from sidkeyd.log import get_logger

# (method, path, body, keep_alive) of a complete request.
OnRequest = Callable[[str, str, bytes, bool], None]


@dataclass(slots=True)
class _Message:
    url: bytes = b""
    header_bytes: int = 0
    body: list[bytes] = field(default_factory=list)
    body_bytes: int = 0
    has_length: bool = False
    in_head: bool = True  # until the headers are complete


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

    @property
    def in_message(self) -> bool:
        """A request has begun and is not complete: the read timeout applies."""
        return self._message is not None

    def abandon(self) -> None:
        """Forget the message in progress (the connection is being closed)."""
        self._message = None

    def feed(self, data: bytes) -> None:
        self._chunk_body_bytes = 0
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            # httptools wraps what a callback raised; the original is the context.
            cause = exc.__context__
            if isinstance(cause, FramingError):
                raise cause from None
            get_logger().error("request.failed", error=repr(cause))
            raise FramingError(
                500, "internal_error", "the daemon failed to handle the request"
            ) from None
        except httptools.HttpParserUpgrade:
            raise FramingError(
                400, "upgrade_not_supported", "protocol upgrades are not supported"
            ) from None
        except httptools.HttpParserError as exc:
            raise FramingError(400, "malformed_request", f"malformed HTTP request: {exc}") from None
        self._check_partial_line(data)

    def _check_partial_line(self, data: bytes) -> None:
        """Bound a head line still arriving: httptools reports it only once complete.

        The length since the last newline is the same however the bytes were split.
        """
        if self._message is None or not self._message.in_head:
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
        if self._partial_line > self._max_header_bytes:
            raise self._headers_too_large()

    # -- parser callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._message = _Message()
        self._on_begin()

    def on_url(self, url: bytes) -> None:
        message = self._current()
        message.url += url
        self._count_header_bytes(message, len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        message = self._current()
        self._count_header_bytes(message, len(name) + len(value))
        lowered = name.lower()
        if lowered == b"content-length":
            message.has_length = True
            if value.strip().isdigit() and int(value) > self._max_body_bytes:
                raise self._body_too_large()
        elif lowered == b"transfer-encoding":
            message.has_length = True

    def on_headers_complete(self) -> None:
        self._current().in_head = False
        # Refused here, before the request is handled: llhttp would complete an upgrade
        # request without its body and leave the rest of the bytes to the new protocol.
        if self._parser.should_upgrade():
            raise FramingError(400, "upgrade_not_supported", "protocol upgrades are not supported")

    def on_body(self, body: bytes) -> None:
        message = self._current()
        message.body_bytes += len(body)
        self._chunk_body_bytes += len(body)
        if message.body_bytes > self._max_body_bytes:
            raise self._body_too_large()
        message.body.append(body)

    def on_message_complete(self) -> None:
        message = self._current()
        self._message = None
        method = self._parser.get_method().decode("ascii", "replace")
        try:
            path = httptools.parse_url(message.url).path.decode("utf-8")
        except (httptools.HttpParserInvalidURLError, UnicodeDecodeError):
            raise FramingError(
                400, "malformed_request", "request target is not a valid path"
            ) from None
        if method in ("POST", "PUT", "PATCH") and not message.has_length:
            raise FramingError(411, "length_required", "a request body needs Content-Length")
        self._on_request(method, path, b"".join(message.body), self._parser.should_keep_alive())

    # -- limits --------------------------------------------------------------------------

    def _current(self) -> _Message:
        assert self._message is not None, "llhttp calls back only inside a message"
        return self._message

    def _count_header_bytes(self, message: _Message, size: int) -> None:
        message.header_bytes += size
        if message.header_bytes > self._max_header_bytes:
            raise self._headers_too_large()

    def _headers_too_large(self) -> FramingError:
        limit = self._max_header_bytes
        return FramingError(431, "headers_too_large", f"request headers are over {limit} bytes")

    def _body_too_large(self) -> FramingError:
        limit = self._max_body_bytes
        return FramingError(413, "body_too_large", f"request body is over {limit} bytes")
