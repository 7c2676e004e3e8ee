"""The shipped systemd units, checked with systemd's own tools (no systemd as PID 1 here)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[2] / "systemd"
ANALYZE = shutil.which("systemd-analyze")


@pytest.fixture
def analyze() -> str:
    if ANALYZE is None:
        if os.environ.get("CI") == "true":
            pytest.fail("systemd-analyze is missing (Debian's systemd package)")
        pytest.skip("systemd-analyze is not installed here")
    return ANALYZE


def test_the_units_verify(analyze: str, tmp_path: Path) -> None:
    """systemd-analyze verify: no error in the service and socket units (binary of this install)."""
    sidkeyd = Path(sys.executable).with_name("sidkeyd")
    for name in ("sidkeyd.service", "sidkeyd.socket"):
        text = (UNITS / name).read_text().replace("/usr/local/bin/sidkeyd", str(sidkeyd))
        (tmp_path / name).write_text(text)
    result = subprocess.run(
        [analyze, "verify", "--man=no", "sidkeyd.service", "sidkeyd.socket"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (0, "") == (result.returncode, result.stderr.strip())


def test_the_service_exposure_is_at_most_2(analyze: str) -> None:
    """systemd-analyze security --offline: an exposure level of 2.0 or less."""
    result = subprocess.run(
        [analyze, "security", "--offline=true", str(UNITS / "sidkeyd.service")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    level = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert level is not None, result.stdout[-500:]
    assert float(level.group(1)) <= 2.0


def test_the_service_is_type_notify_with_a_watchdog() -> None:
    """READY=1 and WATCHDOG=1 are what systemd waits for (the daemon sends them)."""
    text = (UNITS / "sidkeyd.service").read_text()
    assert ["Type=notify", "NotifyAccess=main"] == [
        line for line in text.splitlines() if line.startswith(("Type=", "NotifyAccess="))
    ]
    assert re.search(r"^WatchdogSec=\d+s$", text, re.MULTILINE)


def test_reload_runs_sidkeyd_reload_on_the_service_socket() -> None:
    """ExecReload waits for the reload and fails when it is refused (not a bare kill -HUP)."""
    text = (UNITS / "sidkeyd.service").read_text()
    socket = re.search(r"^ListenStream=(.+)$", (UNITS / "sidkeyd.socket").read_text(), re.M)
    assert socket is not None
    assert [f"ExecReload=/usr/local/bin/sidkeyd reload --socket {socket.group(1)}"] == re.findall(
        r"^ExecReload=.*$", text, re.M
    )
