"""The examples in clients/examples/, each run with its real toolchain against the daemon.

Each signs (no timestamp) and verifies that signature through the Unix socket named by
``$SIDKEYD_SOCKET``, and prints ``{"signed": ..., "verified": ...}``. A missing toolchain fails
the test under CI (``CI=true``; ``.ci/run`` installs them) and skips it elsewhere.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.configs import file_config, key_file
from support.daemon import Daemon
from support.signatures import expected_signature

ROOT = Path(__file__).parents[2]
EXAMPLES = ROOT / "clients" / "examples"
SANDBOX_KEY = "examples-sandbox-key-6b2a-not-real"


@dataclass(frozen=True)
class Example:
    name: str
    path: Path
    tools: tuple[str, ...]  # what must be on PATH
    command: Callable[[Path], list[str]]  # (temp folder) -> argv


EXAMPLE_LIST = [
    Example("curl", EXAMPLES / "curl/sign-and-verify.sh", ("sh", "curl", "jq"), lambda _: ["sh"]),
    Example("java", EXAMPLES / "java/Example.java", ("java",), lambda _: ["java"]),
    Example("go", EXAMPLES / "go/example.go", ("go",), lambda _: ["go", "run"]),
    Example("php", EXAMPLES / "php/example.php", ("php",), lambda _: ["php"]),
    Example("ruby", EXAMPLES / "ruby/example.rb", ("ruby",), lambda _: ["ruby"]),
]


def require_tools(tools: tuple[str, ...], extra: Callable[[], str | None] = lambda: None) -> None:
    """Fail under CI when a toolchain is missing (CI installs them); skip locally."""
    missing = [tool for tool in tools if shutil.which(tool) is None]
    problem = f"not installed: {', '.join(missing)}" if missing else extra()
    if problem is None:
        return
    if "true" == os.environ.get("CI"):
        pytest.fail(f"{problem} (.ci/run installs the example toolchains)")
    pytest.skip(f"{problem}; .ci/run installs it (apt-get install golang php-cli php-curl ruby jq)")


def php_has_curl() -> str | None:
    modules = subprocess.run(["php", "-m"], capture_output=True, text=True, check=False).stdout
    return None if "curl" in modules.split() else "the PHP curl extension (php-curl)"


@pytest.fixture
def daemon(start_daemon) -> Iterator[Daemon]:
    daemon = start_daemon(file_config(), files=key_file(SANDBOX_KEY))
    yield daemon
    daemon.assert_no_secret_in_logs([SANDBOX_KEY])


@pytest.mark.parametrize("example", EXAMPLE_LIST, ids=[e.name for e in EXAMPLE_LIST])
def test_the_example_signs_and_verifies_through_the_socket(
    daemon: Daemon, example: Example, tmp_path: Path
) -> None:
    """The example's signature is the right HMAC for the daemon's timestamp, and verifies."""
    require_tools(example.tools, php_has_curl if "php" == example.name else lambda: None)
    env = {
        **os.environ,
        "SIDKEYD_SOCKET": str(daemon.socket_path),
        # go run: its build cache in the test's folder, no module download (stdlib only).
        "GOCACHE": str(tmp_path / "gocache"),
        "GOPATH": str(tmp_path / "gopath"),
        "GOPROXY": "off",
        "GOFLAGS": "",
    }
    run = subprocess.run(
        [*example.command(tmp_path), str(example.path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=180,
        check=False,
    )
    assert 0 == run.returncode, run.stderr
    output = json.loads(run.stdout)
    signed, verified = output["signed"], output["verified"]
    assert expected_signature(SANDBOX_KEY, signed["timestamp"], "085") == signed["signature"]
    assert (True, "sandbox") == (verified["valid"], verified["environment"])
    assert 1 == len(daemon.events("signature.issued"))


README_SECTION = re.compile(r"^## Signing from your service\n(.*?)^## ", re.M | re.S)


@pytest.mark.parametrize("example", EXAMPLE_LIST, ids=[e.name for e in EXAMPLE_LIST])
def test_the_readme_shows_the_tested_example_word_for_word(example: Example) -> None:
    """README.md's "Signing from your service" holds each example file whole, unchanged."""
    section = README_SECTION.search((ROOT / "README.md").read_text())
    assert section is not None
    blocks = re.findall(r"^```\w*\n(.*?)^```$", section[1], re.M | re.S)
    assert example.path.read_text() in blocks
