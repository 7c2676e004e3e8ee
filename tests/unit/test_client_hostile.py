"""The clients against a daemon that answers badly: a clear ClientError, never the answer.

A small Unix-socket server answers each connection with canned bytes (or not at all) and counts
the requests it received.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from sidkeyd.aio import AsyncClient
from sidkeyd.client import Client
from sidkeyd.errors import ClientError, DaemonUnavailableError, RequestFailedError
from support.daemon import short_socket_dir

TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxNjIyIn0.SECRET-TOKEN-TEXT"


@contextmanager
def daemon_answering(answer: bytes | None) -> Iterator[tuple[Path, list[bytes]]]:
    """A fake daemon: each request gets ``answer`` (None: read it, never answer)."""
    path = short_socket_dir() / "hostile.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(8)
    server.settimeout(0.2)
    requests: list[bytes] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                try:
                    requests.append(conn.recv(65536))
                    if answer is not None:
                        conn.sendall(answer)
                    stop.wait(2 if answer is None else 0.2)
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield path, requests
    finally:
        stop.set()
        thread.join(5)
        server.close()


def answer(status_line: str, body: bytes) -> bytes:
    return f"{status_line}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body


@pytest.mark.parametrize(
    "raw",
    [
        b"garbage\r\n\r\n",
        answer("HTTP/1.1 200 OK", b'{"token": "' + TOKEN.encode() + b'", oops'),
        answer("HTTP/1.1 200 OK", b'["a", "list"]'),
        b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n",
    ],
    ids=["status-line", "not-json", "not-an-object", "too-large"],
)
def test_an_answer_that_is_not_the_protocol_is_a_clear_error_without_it(raw: bytes) -> None:
    """DaemonUnavailableError, with no trace of the answer in it or its context."""
    with daemon_answering(raw) as (path, _):
        client = Client(path, timeout=3)
        with pytest.raises(DaemonUnavailableError) as caught:
            client.token("sandbox")
        client.close()
    error = caught.value
    assert "not its protocol" in str(error)
    assert TOKEN not in repr(error.__cause__) + repr(error.__context__) + str(error)


def test_an_error_field_of_another_shape_is_still_a_request_failure() -> None:
    """{"error": "a string"} with a 500: RequestFailedError(500, "unknown"), not AttributeError."""
    with daemon_answering(answer("HTTP/1.1 500 Oops", b'{"error": "a string"}')) as (path, _):
        client = Client(path, timeout=3)
        with pytest.raises(RequestFailedError) as caught:
            client.sign("sandbox")
        client.close()
    assert (500, "unknown") == (caught.value.status, caught.value.code)


def test_a_timeout_after_sending_is_not_sent_again() -> None:
    """No answer within the timeout: one request reached the daemon, not two."""
    with daemon_answering(None) as (path, requests):
        client = Client(path, timeout=0.5)
        client._connect()  # a kept-alive connection, as after an earlier request
        with pytest.raises(DaemonUnavailableError):
            client.report("sandbox", "v1", 401)
        client.close()
    assert 1 == len(requests)


def test_the_async_client_gives_the_same_clear_error() -> None:
    """AsyncClient: not JSON is DaemonUnavailableError, and ClientError, without the answer."""
    raw = answer("HTTP/1.1 200 OK", b'{"token": "' + TOKEN.encode() + b'", oops')

    async def ask(path: Path) -> BaseException:
        client = AsyncClient(path, timeout=3)
        try:
            await client.token("sandbox")
        except ClientError as exc:
            return exc
        finally:
            await client.close()
        raise AssertionError("no error")

    with daemon_answering(raw) as (path, _):
        error = asyncio.run(ask(path))
    assert isinstance(error, DaemonUnavailableError)
    assert TOKEN not in str(error) + repr(error.__cause__) + repr(error.__context__)
