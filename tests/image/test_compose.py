"""compose.yaml: docker-compose (Debian's) accepts it as written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from containers import IMAGE, unique

REPO = Path(__file__).resolve().parents[2]


def compose(project: str, *args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("docker-compose") is None:
        pytest.fail("docker-compose is missing: tests/image/run.sh installs it from Debian")
    return subprocess.run(
        ["docker-compose", "--file", str(REPO / "compose.yaml"), "--project-name", project, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "SIDKEYD_IMAGE": IMAGE},
    )


@pytest.fixture
def project() -> Iterator[str]:
    name = unique("compose").replace("-", "")
    yield name
    compose(name, "down", "--volumes", "--timeout", "20")


def test_compose_file_is_valid(project: str) -> None:
    """`docker-compose config --quiet` validates compose.yaml against its schema."""
    result = compose(project, "config", "--quiet")
    assert 0 == result.returncode, result.stderr


def test_compose_trial_signs_from_the_client_service(project: str) -> None:
    """`up -d sidkeyd`, then `run --rm client`: the client service gets a signature."""
    started = compose(project, "up", "--detach", "sidkeyd")
    assert 0 == started.returncode, started.stderr
    signed = compose(project, "run", "--rm", "client")
    assert 0 == signed.returncode, signed.stderr
    assert "sandbox" == json.loads(signed.stdout)["environment"]
