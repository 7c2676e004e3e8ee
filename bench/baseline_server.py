"""The benchmark's baseline: the least an HTTP server on this stack can do per request.

A uvloop ``asyncio.Protocol`` on a Unix socket that parses with httptools, like the daemon's
transport, and answers every request with 200 and a JSON body shaped (and sized) like a
``/v1/sign`` answer. No routing, no logging, no limits or timers.

    --mode static   a fixed body: the transport ceiling.
    --mode hmac     also parses the JSON request and signs a fresh timestamp with the daemon's
                    own ``Signer`` and ``TimestampClock``: transport + crypto, without the
                    daemon's app layer and audit log.

Runs until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import cast

import httptools
import uvloop

from sidkeyd.signing import Signer, TimestampClock

API_KEY = "FAKE-bench-key-not-real-000000000000"
PARTNER_ID = "085"
# Pre-encoded like the daemon's KeySnapshot.json_fields, so the body has the same shape.
FIELDS = b'"partner_id": "085", "environment": "sandbox", "key_version": "sha256:0123456789abcdef"'
HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "


def sign_body(signer: Signer, clock: TimestampClock) -> bytes:
    timestamp = clock.now()
    signature = signer.sign(timestamp, PARTNER_ID)
    return (
        f'{{"signature": "{signature}", "timestamp": "{timestamp}", '.encode()
        + FIELDS
        + b', "key_age_s": 1}'
    )


def static_body() -> bytes:
    return sign_body(Signer(API_KEY), TimestampClock(lambda: 1_764_110_525_880_000_000))


def frame(body: bytes) -> bytes:
    return HEAD + str(len(body)).encode() + b"\r\n\r\n" + body


class BaselineProtocol(asyncio.Protocol):
    """One request at a time per connection is all the load generator sends."""

    def __init__(self, answer: Callable[[bytes], bytes]) -> None:
        self._answer = answer
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast("asyncio.Transport", transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            if self._transport is not None:
                self._transport.close()

    def on_message_begin(self) -> None:
        self._body = []

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._transport is not None:
            self._transport.write(self._answer(b"".join(self._body)))


def make_answer(mode: str) -> Callable[[bytes], bytes]:
    if mode == "static":
        response = frame(static_body())
        return lambda _body: response
    signer, clock = Signer(API_KEY), TimestampClock()

    def answer(body: bytes) -> bytes:
        json.loads(body)  # the daemon parses its request too
        return frame(sign_body(signer, clock))

    return answer


async def serve(path: Path, mode: str) -> None:
    path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(1024)
    loop = asyncio.get_running_loop()
    answer = make_answer(mode)
    server = await loop.create_unix_server(lambda: BaselineProtocol(answer), sock=sock)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"baseline {mode} pid={os.getpid()} listening on {path}", flush=True)
    try:
        await stop.wait()
    finally:
        server.close()
        path.unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", type=Path, required=True)
    parser.add_argument("--mode", choices=("static", "hmac"), default="static")
    args = parser.parse_args()
    uvloop.run(serve(args.socket, args.mode))


if __name__ == "__main__":
    main()
