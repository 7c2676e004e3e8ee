"""The daemon under a NOTIFY_SOCKET, as systemd runs a Type=notify service with WatchdogSec.

A datagram socket stands in for the service manager and records every message in order.
"""

from __future__ import annotations

import signal
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from support.configs import file_config, key_file
from support.daemon import Daemon, short_socket_dir

StartDaemon = Callable[..., Daemon]
KEY = "notify-e2e-key-1c3f-not-real"


class Manager:
    """Collects sd_notify datagrams; ``wait_for(text)`` waits (bounded) until one holds it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.messages: list[str] = []
        self._cond = threading.Condition()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(4096)
            except TimeoutError:
                continue
            with self._cond:
                self.messages.append(data.decode())
                self._cond.notify_all()

    def wait_for(self, text: str, count: int = 1, timeout: float = 30) -> None:
        with self._cond:
            ok = self._cond.wait_for(
                lambda: sum(text in m for m in self.messages) >= count, timeout
            )
        assert ok, f"no {count} x {text!r} in {self.messages}"

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()


@pytest.fixture
def manager() -> Iterator[Manager]:
    manager = Manager(short_socket_dir() / "notify.sock")
    yield manager
    manager.close()


def test_ready_watchdog_and_stopping_in_order(start_daemon: StartDaemon, manager: Manager) -> None:
    """STATUS starting, READY=1 with each environment's health, pings while signing, STOPPING=1."""
    env = {"NOTIFY_SOCKET": str(manager.path), "WATCHDOG_USEC": "200000"}
    daemon = start_daemon(file_config(), files=key_file(KEY), env=env)
    client = daemon.client()
    manager.wait_for("READY=1")
    for _ in range(200):  # the pings go on while the loop is busy signing
        client.sign("sandbox")
    manager.wait_for("WATCHDOG=1", count=3)
    daemon.signal(signal.SIGTERM)
    daemon.wait_for_event("daemon.stopped")
    manager.wait_for("STOPPING=1")

    kinds = [m.split("\n")[0].split("=")[0] for m in manager.messages]
    ready = next(m for m in manager.messages if m.startswith("READY=1"))
    assert ("STATUS", True) == (kinds[0], "starting" in manager.messages[0])
    assert "STATUS=sandbox: healthy" in ready
    assert kinds.index("READY") < kinds.index("WATCHDOG") < kinds.index("STOPPING")
    assert "STOPPING" == kinds[-1]


def test_without_notify_socket_nothing_is_sent(start_daemon: StartDaemon, manager: Manager) -> None:
    """No NOTIFY_SOCKET in the environment: the daemon serves and says nothing to anyone."""
    daemon = start_daemon(file_config(), files=key_file(KEY))
    daemon.client().sign("sandbox")
    daemon.stop()
    assert [] == manager.messages
