"""A client in another PID namespace, as a client container is: the kernel gives pid 0.

The daemon runs in a PID namespace of its own (`unshare --pid --fork`, root only), as it does
in its container; the clients run on the host, outside it. tests/image/ shows the same across
real containers.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.configs import file_config, key_file
from support.daemon import DEFAULT_TIMEOUT, Daemon

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="a new PID namespace needs root and unshare (util-linux)",
)
KEY = "pid-ns-key-7c0d2a9e4b61f358"
PYTHON = os.path.realpath(sys.executable)
CONFIG = file_config(
    extra=f"""
[environments.sandbox.allow]
users = ["root"]

[environments.narrowed]
source = "local"
secret = "sandbox"
partner_id = "085"
[environments.narrowed.allow]
users = ["root"]
executables = ["{PYTHON}"]
"""
)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    """The daemon as pid 1 of a new PID namespace; stopped with SIGTERM to that process."""
    for name, text in key_file(KEY).items():
        (tmp_path / name).write_text(text)
    started = Daemon.write_config(tmp_path, CONFIG)
    command = [sys.executable, "-m", "sidkeyd", "serve", "-c", str(started.config_path)]
    with started.log_path.open("ab") as log:
        # unshare ignores SIGTERM; --kill-child ends the daemon should unshare itself die.
        started.process = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--kill-child", *command],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    unshare = started.process
    try:
        started.wait_for_event("daemon.started")
        yield started
    finally:
        started.stopped = True
        children = Path(f"/proc/{unshare.pid}/task/{unshare.pid}/children")
        for pid in children.read_text().split() if children.exists() else ():
            os.kill(int(pid), signal.SIGTERM)
        try:
            unshare.wait(DEFAULT_TIMEOUT)
        except subprocess.TimeoutExpired:
            unshare.kill()
            unshare.wait()


def sign(daemon: Daemon, environment: str) -> subprocess.CompletedProcess[str]:
    """``sidkeyd sign`` from the host's PID namespace, where the daemon's is not."""
    socket_path = str(daemon.socket_path)
    return subprocess.run(
        [sys.executable, "-m", "sidkeyd", "sign", "--env", environment, "--socket", socket_path],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_uid_rule_holds_and_the_audit_line_says_pid_0(daemon: Daemon) -> None:
    """root's uid passes from another PID namespace; signature.issued names peer_pid 0."""
    result = sign(daemon, "sandbox")
    assert 0 == result.returncode, result.stderr
    issued = daemon.wait_for_event("signature.issued", environment="sandbox")
    assert (0, 0, None) == (issued["peer_pid"], issued["peer_uid"], issued["peer_exe"])


def test_executables_rule_refuses_a_client_in_another_pid_namespace(daemon: Daemon) -> None:
    """The allowed uid running the allowed binary is refused: no pid, so no executable."""
    result = sign(daemon, "narrowed")
    assert 1 == result.returncode
    assert "forbidden" in result.stderr
    rejected = daemon.wait_for_event("request.rejected", reason="forbidden")
    assert 0 == rejected["peer_pid"]


def test_start_warns_that_the_executables_rule_fails_across_containers(daemon: Daemon) -> None:
    """The daemon says at start which policy relies on /proc, and sandbox's uid rule is fine."""
    messages = [e["message"] for e in daemon.events("config.warning")]
    assert [True] == [m.startswith("environments.narrowed.allow: executables") for m in messages]
