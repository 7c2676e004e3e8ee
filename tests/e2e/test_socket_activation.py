"""The daemon under ``systemd-socket-activate``: it serves the inherited socket as it is.

systemd-socket-activate listens on the path, starts the daemon at the first connection with
LISTEN_FDS/LISTEN_PID, like a ``.socket`` unit. The first client must be answered (today: a
prompt 503 starting while the first check runs, never a reset), the daemon must not refuse the
socket as "in use", and it must never unlink a path it did not make.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sidkeyd.client import Client
from support.configs import file_config, key_file
from support.daemon import Daemon, short_socket_dir

TOOL = shutil.which("systemd-socket-activate")
KEY = "socket-activation-key-77d0-not-real"


@pytest.fixture
def tool() -> str:
    if TOOL is None:
        if os.environ.get("CI") == "true":
            pytest.fail("systemd-socket-activate is missing (Debian's systemd package)")
        pytest.skip("systemd-socket-activate is not installed here")
    return TOOL


def test_an_inherited_socket_is_served_and_never_unlinked(tool: str, tmp_path: Path) -> None:
    """First client answered at once; signing works; after SIGTERM the path is still there."""
    (tmp_path / "keys.toml").write_text(key_file(KEY)["keys.toml"])
    daemon = Daemon.write_config(tmp_path, file_config())  # its own socket path is never used
    activated = short_socket_dir() / "activated.sock"
    with daemon.log_path.open("ab") as log:
        process = subprocess.Popen(
            [
                tool,
                "-l",
                str(activated),
                "-E",
                f"PYTHONPATH={os.pathsep.join(sys.path)}",
                sys.executable,
                "-m",
                "sidkeyd",
                "serve",
                "-c",
                str(daemon.config_path),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    daemon.process = process
    try:
        deadline = time.monotonic() + 30
        while not activated.exists():  # the tool binds first, then waits for a client
            assert (True, None) == (time.monotonic() < deadline, process.poll())
            time.sleep(0.02)
        client = Client(activated)
        try:
            first = client.request("POST", "/v1/sign", {"environment": "sandbox"})[0]
            daemon.wait_for_event("daemon.started")
            signed = client.sign("sandbox")
        finally:
            client.close()
        process.send_signal(signal.SIGTERM)
        code = process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
    assert first in (200, 503)  # answered, not reset: 503 is "starting"
    assert ("sandbox", 0, True, False) == (
        signed["environment"],
        code,
        activated.exists(),
        daemon.socket_path.exists(),
    )
    assert [] == daemon.events("daemon.failed")
    daemon.assert_no_secret_in_logs([KEY])


def test_a_listen_fds_that_is_not_a_number_stops_the_start_naming_it(tmp_path: Path) -> None:
    """LISTEN_PID is the daemon's own pid (``exec``) and LISTEN_FDS garbage: exit 3 as other
    start-up failures, ``daemon.failed`` naming the variable, no traceback, nothing bound."""
    (tmp_path / "keys.toml").write_text(key_file(KEY)["keys.toml"])
    daemon = Daemon.write_config(tmp_path, file_config())
    script = 'exec env LISTEN_PID=$$ LISTEN_FDS=three "$@"'
    serve = [sys.executable, "-m", "sidkeyd", "serve", "-c", str(daemon.config_path)]
    with daemon.log_path.open("ab") as log:
        code = subprocess.run(
            ["sh", "-c", script, "sh", *serve],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
            timeout=60,
            check=False,
        ).returncode
    failed = daemon.events("daemon.failed")

    assert 3 == code
    assert 1 == len(failed)
    assert "LISTEN_FDS is not a number ('three')" in failed[0]["reason"]
    assert "Traceback" not in daemon.log_path.read_text()
    assert not daemon.socket_path.exists()
