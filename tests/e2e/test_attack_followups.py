"""Regressions from the outside attack run after the first wave: each failed before its fix.

- a key in the AWS error *code* (not its message) reached the admin status and the log;
- SIGTERM during the first loads waited for a hung backend's own timeouts;
- a connection whose awaited request was pending kept parsing and queueing what followed it.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from test_shutdown_and_signals import HUNG_CONFIG

from support.daemon import Daemon, refused
from support.moto_server import MotoEndpoint, OutageFront
from support.schedules import NO_SCHEDULE

pytestmark = pytest.mark.aws

StartDaemon = Callable[..., Daemon]
HELD_KEY = "followup-e2e-held-key-9d1f-not-real"
CODE_KEY = "f3a9b2c4d5e6f708192a3b4c5d6e7f80"  # a hex key, never held, in the error code
EXIT_BOUND_S = 30  # far above shutdown_timeout (2s), far below the backend's timeouts
# The hung-backend daemon of test_shutdown_and_signals, checking only when told to.
CONFIG = HUNG_CONFIG.replace("@REFRESH@", NO_SCHEDULE)


@pytest.fixture
def front(moto_endpoint: MotoEndpoint) -> Iterator[OutageFront]:
    with moto_endpoint.outage_front() as front:
        yield front


def configured(moto_endpoint: MotoEndpoint, front: OutageFront) -> str:
    name = moto_endpoint.secret_name("followup")
    moto_endpoint.client().create_secret(Name=name, SecretString=HELD_KEY)
    return CONFIG.replace("@ENDPOINT@", front.url).replace("@SECRET@", name)


def raw(daemon: Daemon, method: str, path: str, body: bytes = b"") -> str:
    head = f"{method} {path} HTTP/1.1\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    return daemon.raw(head.encode() + body).decode()


def test_a_key_in_the_aws_error_code_is_not_repeated(
    start_daemon: StartDaemon, moto_endpoint: MotoEndpoint, front: OutageFront
) -> None:
    """A hex 'error code' is shown as Unknown: not in the admin status, refresh, or the log."""
    daemon = start_daemon(configured(moto_endpoint, front))
    daemon.wait_for_event("key.loaded", environment="sandbox")
    front.answer_with = (400, {"__type": CODE_KEY, "message": "nothing to see"})

    refreshed = raw(daemon, "POST", "/v1/refresh", b"{}")
    status = raw(daemon, "GET", "/v1/status")
    daemon.stop()

    assert "Unknown" in refreshed
    assert [] == [text for text in (refreshed, status) if CODE_KEY in text]
    daemon.assert_no_secret_in_logs([HELD_KEY, CODE_KEY])


def test_sigterm_during_a_hung_first_load_stops_within_the_budget(
    moto_endpoint: MotoEndpoint, front: OutageFront, tmp_path: Path
) -> None:
    """The first load hangs; SIGTERM: exit 0 within shutdown_timeout, socket removed, no start."""
    config = configured(moto_endpoint, front)
    front.hanging = True
    daemon = Daemon.write_config(tmp_path, config)
    daemon.launch()
    assert daemon.process is not None
    try:
        assert front.held.wait(EXIT_BOUND_S)  # the first load is in the backend's hands
        daemon.signal(signal.SIGTERM)
        code = daemon.process.wait(EXIT_BOUND_S)
    except subprocess.TimeoutExpired:
        raise AssertionError("the daemon outlived its shutdown budget") from None
    finally:
        daemon.stop()  # kills it if it is still there
    assert (0, False, []) == (
        code,
        daemon.socket_path.exists(),
        daemon.events("daemon.started"),
    )
    daemon.wait_for_event("daemon.stopped")


def test_requests_behind_a_pending_one_wait_in_the_kernel_not_in_the_daemon(
    start_daemon: StartDaemon, moto_endpoint: MotoEndpoint, front: OutageFront
) -> None:
    """A refresh hangs on the backend; 60 KiB requests pipelined behind it are not read in."""
    daemon = start_daemon(configured(moto_endpoint, front))
    daemon.wait_for_event("key.loaded", environment="sandbox")
    front.hanging = True
    body = json.dumps({"environment": "sandbox", "timestamp": "x" * 60_000}).encode()
    sign = b"POST /v1/sign HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    sent = 0
    with daemon.connect() as sock:
        sock.sendall(b"POST /v1/refresh HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}")
        assert front.held.wait(EXIT_BOUND_S)  # the refresh now waits on the backend
        sock.settimeout(2)
        try:
            for _ in range(64):  # 3.8 MiB at most: before the fix, 33 of these were read in
                sock.sendall(sign)
                sent += len(sign)
        except TimeoutError:
            pass
    assert sent < 33 * len(sign)


def test_while_the_first_load_hangs_every_request_gets_a_prompt_503_starting(
    moto_endpoint: MotoEndpoint, front: OutageFront, tmp_path: Path
) -> None:
    """The socket answers during the first loads: sign is 503 starting, health says so."""
    config = configured(moto_endpoint, front)
    front.hanging = True
    daemon = Daemon.write_config(tmp_path, config)
    daemon.launch()
    try:
        assert front.held.wait(EXIT_BOUND_S)  # the first load is in the backend's hands
        daemon.wait_for_event("daemon.listening")
        client = daemon.client()
        answer = refused(lambda: client.sign("sandbox"))
        healthy, health = client.health()
    finally:
        daemon.stop()
    assert ((503, "starting"), False) == (answer, healthy)
    assert health["environments"]["sandbox"]["reason"].startswith("starting")
