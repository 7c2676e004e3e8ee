"""What HTTP clients of other languages send, against the daemon as a real process.

Real curl where it shows the behaviour (Expect, HEAD, h2c), raw sockets where the order of
bytes on the wire is the point.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import pytest

from support.configs import file_config, key_file
from support.daemon import Daemon, parse_responses, read_all

SANDBOX_KEY = "clients-sandbox-key-91c4-not-real"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
SIGN_BODY = b'{"environment": "sandbox"}'


@pytest.fixture
def daemon(start_daemon) -> Iterator[Daemon]:
    daemon = start_daemon(file_config(), files=key_file(SANDBOX_KEY))
    yield daemon
    daemon.assert_no_secret_in_logs([SANDBOX_KEY])


def curl(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    """curl -v on the daemon's socket; its trace (``< `` lines received) is on stderr."""
    return subprocess.run(
        ["curl", "-sS", "-v", "--unix-socket", str(daemon.socket_path), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def received(run: subprocess.CompletedProcess[str]) -> list[str]:
    """The response lines curl logged as received."""
    return [line[2:].strip() for line in run.stderr.splitlines() if line.startswith("< ")]


def test_curl_gets_100_continue_before_it_sends_the_body(daemon: Daemon) -> None:
    """curl with Expect: 100-continue and a 2 KiB body (a null timestamp) gets 100, then 200.

    Without the interim response curl waited its 1 s expect timeout before sending the body.
    (curl sends the header unasked for bodies over 1 KiB or 1 MiB, by version.)
    """
    body = '{"environment": "sandbox", "timestamp": null' + " " * 2048 + "}"
    run = curl(daemon, "http://localhost/v1/sign", "-H", "Expect: 100-continue", "-d", body)
    assert 0 == run.returncode, run.stderr
    lines = received(run)
    assert "Expect: 100-continue" in run.stderr
    assert ["HTTP/1.1 100 Continue", "HTTP/1.1 200 OK"] == [
        line for line in lines if line.startswith("HTTP/")
    ]
    assert "sandbox" == json.loads(run.stdout)["environment"]


def test_the_daemon_sends_100_continue_before_the_body(daemon: Daemon) -> None:
    """Headers with Expect alone get ``100 Continue``; the body sent after it gets the 200."""
    head = (
        b"POST /v1/sign HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\n"
        b"Content-Length: %d\r\n\r\n" % len(SIGN_BODY)
    )
    with daemon.connect() as sock:
        sock.sendall(head)
        interim = b""
        while len(interim) < len(CONTINUE):
            chunk = sock.recv(len(CONTINUE) - len(interim))  # the socket's timeout is 10 s
            assert chunk, "closed before 100 Continue"
            interim += chunk
        assert CONTINUE == interim
        sock.sendall(SIGN_BODY)
        sock.shutdown(1)
        assert [200] == [status for status, _ in parse_responses(read_all(sock))]


def test_curl_head_gets_the_headers_of_get(daemon: Daemon) -> None:
    """curl --head /v1/health: 200 with the GET's Content-Length, and no body."""
    get = curl(daemon, "-i", "http://localhost/v1/health")
    head = curl(daemon, "--head", "http://localhost/v1/health")
    assert (0, 0) == (get.returncode, head.returncode)
    length = [line for line in received(get) if line.lower().startswith("content-length")]
    assert ["HTTP/1.1 200 OK", *length] == [
        line for line in received(head) if line.startswith("HTTP/") or line in length
    ]
    assert "" == head.stdout.split("\n\n", 1)[1]  # text mode: CRLF read as LF


def test_a_head_response_is_followed_by_the_next_on_one_connection(daemon: Daemon) -> None:
    """HEAD then GET on one connection: the HEAD answer has no body, the GET its own."""
    with daemon.connect() as sock:
        sock.sendall(
            b"HEAD /v1/status HTTP/1.1\r\n\r\nGET /v1/health HTTP/1.1\r\nConnection: close\r\n\r\n"
        )
        raw = read_all(sock)
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert [200] == [status for status, _ in parse_responses(rest)]


def test_an_http_1_0_keep_alive_client_is_told_and_kept(daemon: Daemon) -> None:
    """HTTP/1.0 with Connection: keep-alive: the answer says keep-alive; a second request works."""
    request = b"GET /v1/health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
    with daemon.connect() as sock:
        sock.sendall(request + b"GET /v1/health HTTP/1.0\r\n\r\n")
        raw = read_all(sock)
    heads = [line for line in raw.lower().split(b"\r\n") if line.startswith(b"connection:")]
    assert [b"connection: keep-alive", b"connection: close"] == heads
    assert [200, 200] == [status for status, _ in parse_responses(raw)]


def test_curl_asking_for_h2c_is_served_http_1_1(daemon: Daemon) -> None:
    """curl --http2 on http:// sends Upgrade: h2c; it gets a plain HTTP/1.1 200, no 101."""
    run = curl(daemon, "--http2", "http://localhost/v1/sign", "-d", SIGN_BODY.decode())
    assert 0 == run.returncode, run.stderr
    assert "Upgrade: h2c" in run.stderr
    assert ["HTTP/1.1 200 OK"] == [line for line in received(run) if line.startswith("HTTP/")]
    assert "sandbox" == json.loads(run.stdout)["environment"]
