"""HTTP messages as plain data, and the error response format. No I/O."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from http import HTTPStatus

from sidkeyd.peer import Peer


@dataclass(slots=True)
class Request:
    method: str
    path: str
    body: bytes
    peer: Peer


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = field(default=())
    close: bool = False  # close the connection after sending (unrecoverable framing)
    content_type: str = "application/json"


def json_response(status: int, payload: object, **kwargs: object) -> Response:
    return Response(status, json.dumps(payload).encode("utf-8"), **kwargs)  # type: ignore[arg-type]


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    headers: tuple[tuple[str, str], ...] = (),
    close: bool = False,
) -> Response:
    body = {"error": {"code": code, "message": message}}
    return Response(status, json.dumps(body).encode("utf-8"), headers, close)


def reason_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


_OK_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
# The interim response to ``Expect: 100-continue``: send the body.
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def encode_response(
    response: Response,
    *,
    keep_alive: bool,
    announce_keep_alive: bool = False,
    omit_body: bool = False,
) -> bytes:
    """The response on the wire: status line, headers, JSON body.

    ``announce_keep_alive``: an HTTP/1.0 client closes unless told ``Connection: keep-alive``.
    ``omit_body``: the answer to HEAD, with the headers (and ``Content-Length``) of the GET.
    """
    plain = not (
        response.headers
        or response.close
        or announce_keep_alive
        or omit_body
        or response.content_type != "application/json"
    )
    if response.status == 200 and keep_alive and plain:
        return b"%s%d\r\n\r\n%s" % (_OK_HEAD, len(response.body), response.body)
    head = [
        f"HTTP/1.1 {response.status} {reason_phrase(response.status)}",
        f"Content-Type: {response.content_type}",
        f"Content-Length: {len(response.body)}",
    ]
    head.extend(f"{name}: {value}" for name, value in response.headers)
    if not keep_alive or response.close:
        head.append("Connection: close")
    elif announce_keep_alive:
        head.append("Connection: keep-alive")
    body = b"" if omit_body else response.body
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
