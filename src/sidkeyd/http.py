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


def encode_response(response: Response, *, keep_alive: bool) -> bytes:
    """The response on the wire: status line, headers, JSON body."""
    if response.status == 200 and keep_alive and not response.headers and not response.close:
        return b"%s%d\r\n\r\n%s" % (_OK_HEAD, len(response.body), response.body)
    head = [
        f"HTTP/1.1 {response.status} {reason_phrase(response.status)}",
        "Content-Type: application/json",
        f"Content-Length: {len(response.body)}",
    ]
    head.extend(f"{name}: {value}" for name, value in response.headers)
    if not keep_alive or response.close:
        head.append("Connection: close")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + response.body
