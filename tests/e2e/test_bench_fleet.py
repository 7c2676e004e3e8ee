"""bench/fleet.py as a smoke test: two hosts per mode, one rotation each, every host converged.

It runs the benchmark as a process, as a user would, with a short schedule and idle window; it
asserts what the run proved (each host signed with the new key, checked against a local HMAC,
or the run exits non-zero), never how long it took.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.aws

FLEET = Path(__file__).resolve().parents[2] / "bench" / "fleet.py"


@pytest.fixture
def can_make_hosts() -> None:
    """Each host is a UTS namespace: root, unshare and nsenter; and moto_server in the venv."""
    if os.geteuid() != 0:
        pytest.skip("bench/fleet.py needs root for its UTS namespaces")
    for tool in ("unshare", "nsenter"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (util-linux)")
    if not Path(sys.executable).with_name("moto_server").exists():
        pytest.skip("moto_server not found in the venv: install moto[server]")


def test_every_host_converges_in_both_modes(can_make_hosts: None) -> None:
    """Two hosts per mode, one rotation: both rows present, each with 2/2 hosts converged."""
    result = subprocess.run(
        [sys.executable, str(FLEET), "--n", "2", "--rotations", "1", "--interval", "1",
         "--idle", "1", "--seed", "1"],
        capture_output=True, text=True, timeout=110, check=False,
    )  # fmt: skip
    assert 0 == result.returncode, result.stderr[-2000:]
    rows = re.findall(r"^\| (schedule|notify) \| (\d+/\d+) \|", result.stdout, re.MULTILINE)
    assert [("schedule", "2/2"), ("notify", "2/2")] == rows, result.stdout
