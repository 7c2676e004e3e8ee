"""Containers for the image tests: the docker CLI, a daemon container and its socket volume."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

IMAGE = os.environ.get("SIDKEYD_IMAGE", "")  # set by tests/image/run.sh
DAEMON_UID, SOCKET_GID = 10001, 10010  # fixed in the Dockerfile
CLIENT_UID, OTHER_UID = 20001, 20002  # client containers: no entry in the image's /etc/passwd
WAIT_S = 60.0
T = TypeVar("T")


def docker(
    *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: exit {result.returncode}\n{result.stderr}")
    return result


def wait_until(condition: Callable[[], T | None], what: str, timeout: float = WAIT_S) -> T:
    """Poll an observable condition (a log line, a container state) until it holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value is not None:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def unique(prefix: str) -> str:
    return f"sidkeyd-test-{prefix}-{uuid.uuid4().hex[:8]}"


@dataclass
class DaemonContainer:
    """One `docker run -d` of the image, its config folder bind-mounted at /etc/sidkeyd."""

    image: str
    config_dir: Path
    name: str = field(default_factory=lambda: unique("daemon"))
    volume: str = field(default_factory=lambda: unique("socket"))

    def run(self, *extra: str) -> None:
        docker("volume", "create", self.volume)
        docker(
            "run", "--detach", "--name", self.name, "--read-only",
            "--volume", f"{self.volume}:/run/sidkeyd",
            "--volume", f"{self.config_dir}:/etc/sidkeyd:ro",
            "--health-interval", "1s", "--health-start-period", "1s", "--health-retries", "2",
            *extra, self.image,
        )  # fmt: skip

    def remove(self) -> None:
        docker("rm", "--force", self.name, check=False)
        docker("volume", "rm", "--force", self.volume, check=False)

    def events(self, name: str, **match: Any) -> list[dict[str, Any]]:
        logs = docker("logs", self.name, check=False)
        out = []
        for line in (logs.stdout + logs.stderr).splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            wanted = isinstance(event, dict) and event.get("event") == name
            if wanted and all(event.get(k) == v for k, v in match.items()):
                out.append(event)
        return out

    def wait_for_event(self, name: str, **match: Any) -> dict[str, Any]:
        return wait_until(
            lambda: next(iter(self.events(name, **match)), None), f"{name} from {self.name}"
        )

    def state(self) -> dict[str, Any]:
        inspected: list[dict[str, Any]] = json.loads(docker("inspect", self.name).stdout)
        return dict(inspected[0]["State"])

    def client(self, *command: str, user: str, groups: tuple[int, ...] = (SOCKET_GID,)):
        """``sidkeyd COMMAND`` in a second container sharing the socket volume (read-only)."""
        group_args = [arg for gid in groups for arg in ("--group-add", str(gid))]
        return docker(
            "run", "--rm", "--read-only", "--user", user, *group_args,
            "--volume", f"{self.volume}:/run/sidkeyd:ro",
            self.image, *command,
            check=False,
        )  # fmt: skip


def write_config_dir(folder: Path, config: str, keys: str, *, key_mode: int = 0o400) -> Path:
    """A folder for /etc/sidkeyd: the config readable by all, the key file the daemon's own."""
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o755)
    (folder / "sidkeyd.toml").write_text(config)
    os.chmod(folder / "sidkeyd.toml", 0o644)
    keys_path = folder / "keys.toml"
    keys_path.write_text(keys)
    os.chown(keys_path, DAEMON_UID, SOCKET_GID)
    os.chmod(keys_path, key_mode)
    return folder
