"""The README's callback receiver (clients/examples/callback/receiver.py), run as written."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from support import signatures
from support.configs import file_config, key_file
from support.daemon import Daemon
from support.moto_server import free_port

StartDaemon = Callable[..., Daemon]
RECEIVER = Path(__file__).parents[2] / "clients" / "examples" / "callback" / "receiver.py"
KEY = "callback-example-key-51de-not-real"


def post(url: str, body: dict[str, str]) -> int:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as refused:
        return refused.code


def wait_until_listening(url: str, receiver: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert receiver.poll() is None, "the receiver exited"
        try:
            urllib.request.urlopen(url, timeout=1)  # a GET: 501 once it listens
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.05)  # not listening yet: a bounded poll on an observable condition
    raise AssertionError("the receiver never listened")


def test_the_receiver_accepts_a_signed_callback_and_refuses_a_forged_one(
    start_daemon: StartDaemon,
) -> None:
    """Signed with the key: 200. The same callback with another signature: 401."""
    daemon = start_daemon(file_config(environment="production"), files=key_file(KEY, "production"))
    port = free_port()
    url = f"http://127.0.0.1:{port}/callback"
    receiver = subprocess.Popen(
        [sys.executable, str(RECEIVER), str(port), "production"],
        env={"SIDKEYD_SOCKET": str(daemon.socket_path), "PATH": "/usr/bin:/bin"},
    )
    try:
        wait_until_listening(url, receiver)
        timestamp = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        signed = {
            "timestamp": timestamp,
            "signature": signatures.expected_signature(KEY, timestamp, "085"),
        }
        forged = {"timestamp": timestamp, "signature": "Zm9yZ2VkLXNpZ25hdHVyZQ=="}
        assert (200, 401) == (post(url, signed), post(url, forged))
    finally:
        receiver.terminate()
        receiver.wait(10)
    daemon.assert_no_secret_in_logs([KEY])
