"""The daemon as a real process on a real Unix socket, for end-to-end tests.

    daemon = Daemon.start(tmp_dir, config_toml)
    daemon.client().sign("sandbox")
    daemon.wait_for_event("key.rotated", environment="sandbox")
    daemon.stop()

Logs are JSON lines captured to a file; ``wait_for_event`` polls that file until the event
appears (a bounded wait on an observable condition, never a fixed sleep).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from sidkeyd.client import Client
from sidkeyd.errors import RequestFailedError

DEFAULT_TIMEOUT = 30.0
# Every daemon log of the session and every key a test declared: scanned together at the end
# (tests/conftest.py), so a key leaked by one test's daemon is caught even if another test
# declared it.
ALL_LOGS: list[Path] = []
ALL_SECRETS: set[str] = set()
T = TypeVar("T")


class DaemonError(AssertionError):
    pass


def short_socket_dir() -> Path:
    """AF_UNIX paths are limited to ~107 bytes; pytest's tmp_path can be longer.

    Removed when the test process exits.
    """
    folder = Path(tempfile.mkdtemp(prefix="sidkeyd-", dir="/tmp"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


class Daemon:
    def __init__(self, config_path: Path, socket_path: Path, log_path: Path) -> None:
        self.config_path = config_path
        self.socket_path = socket_path
        self.log_path = log_path
        ALL_LOGS.append(log_path)
        self.process: subprocess.Popen[bytes] | None = None
        self.stopped = False  # stop() was called: an exit from then on is no death
        self._clients: list[Client] = []

    @classmethod
    def write_config(cls, folder: Path, config: str, socket_path: Path | None = None) -> Daemon:
        """Write ``config`` (with ``{socket}`` standing for the socket path) into ``folder``."""
        socket_path = socket_path or short_socket_dir() / "sidkeyd.sock"
        config_path = folder / "sidkeyd.toml"
        config_path.write_text(config.replace("{socket}", str(socket_path)))
        return cls(config_path, socket_path, folder / "daemon.log")

    @classmethod
    def start(cls, folder: Path, config: str, *, env: dict[str, str] | None = None) -> Daemon:
        daemon = cls.write_config(folder, config)
        daemon.launch(env=env)
        daemon.wait_for_event("daemon.started")
        return daemon

    def launch(self, *, env: dict[str, str] | None = None) -> None:
        environ = {**os.environ, **(env or {})}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "sidkeyd", "serve", "-c", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environ,
            )

    # -- logs ----------------------------------------------------------------------------

    def log_lines(self) -> list[str]:
        if not self.log_path.exists():
            return []
        return self.log_path.read_text(errors="replace").splitlines()

    def events(self, name: str | None = None, **match: Any) -> list[dict[str, Any]]:
        out = []
        for line in self.log_lines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if not isinstance(event, dict):
                continue
            if name is not None and event.get("event") != name:
                continue
            if all(event.get(k) == v for k, v in match.items()):
                out.append(event)
        return out

    def rejections(self, reason: str) -> int:
        """How many requests were refused for ``reason``: full lines plus aggregated repeats."""
        full = len(self.events("request.rejected", reason=reason))
        repeated = sum(
            e["repeated"] for e in self.events("request.rejected_repeated", reason=reason)
        )
        return full + repeated

    def wait_for_event(
        self, name: str, *, count: int = 1, timeout: float = DEFAULT_TIMEOUT, **match: Any
    ) -> dict[str, Any]:
        """Wait until ``count`` events called ``name`` (with fields ``match``) were logged."""

        def found() -> dict[str, Any] | None:
            events = self.events(name, **match)
            return events[count - 1] if len(events) >= count else None

        return self._wait(found, f"{name} {match}", timeout)

    def wait_for_text(self, text: str, timeout: float = DEFAULT_TIMEOUT) -> str:
        """Wait for a log line containing ``text`` (for console-format logs)."""

        def found() -> str | None:
            return next((line for line in self.log_lines() if text in line), None)

        return self._wait(found, repr(text), timeout)

    def _wait(self, probe: Callable[[], T | None], what: str, timeout: float) -> T:
        deadline = time.monotonic() + timeout
        while True:
            result = probe()
            if result is not None:
                return result
            if self.process is not None and self.process.poll() is not None:
                raise DaemonError(
                    f"daemon exited ({self.process.returncode}) before {what}:\n"
                    + "\n".join(self.log_lines()[-30:])
                )
            if time.monotonic() > deadline:
                raise DaemonError(
                    f"no {what} within {timeout}s:\n" + "\n".join(self.log_lines()[-30:])
                )
            time.sleep(0.02)

    def assert_no_secret_in_logs(self, secrets: Iterable[str]) -> None:
        secrets = list(secrets)
        ALL_SECRETS.update(secrets)
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        for secret in secrets:
            assert secret not in text, "key material found in the daemon's log"

    # -- talking to it -------------------------------------------------------------------

    def client(self) -> Client:
        client = Client(self.socket_path)
        self._clients.append(client)
        return client

    def connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(str(self.socket_path))
        return sock

    def raw(self, data: bytes) -> bytes:
        """Send raw bytes on a fresh connection and read until the daemon closes it.

        A connection refused at accept (a connection limit) is answered and closed before the
        request is read, so the send may find it closed: its answer is still there to read."""
        with self.connect() as sock:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(data)
            return read_all(sock)

    def cli(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "sidkeyd", *args, "--socket", str(self.socket_path)],
            capture_output=True,
            text=True,
            timeout=DEFAULT_TIMEOUT,
            env={**os.environ, **(env or {})},
            check=False,
        )

    def signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def stop(self, timeout: float = DEFAULT_TIMEOUT) -> int:
        self.stopped = True
        for client in self._clients:
            client.close()
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def refused(call: Callable[[], Any]) -> tuple[int, str]:
    """The (status, error code) of a request the daemon must refuse."""
    with pytest.raises(RequestFailedError) as caught:
        call()
    return caught.value.status, caught.value.code


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def parse_responses(data: bytes) -> list[tuple[int, dict[str, Any]]]:
    """Split pipelined HTTP/1.1 responses into (status, JSON body)."""
    out = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = next(
            int(line.split(":", 1)[1])
            for line in lines
            if line.lower().startswith("content-length")
        )
        out.append((status, json.loads(rest[:length])))
        data = rest[length:]
    return out
