"""systemd's notify protocol (sd_notify(3)) in a few lines, without libsystemd.

The service manager passes ``NOTIFY_SOCKET`` (a datagram socket path, ``@`` for the abstract
namespace) and, with ``WatchdogSec=``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID``. The daemon sends
``READY=1`` once every environment has been checked, ``STATUS=`` lines a human reads in
``systemctl status``, ``WATCHDOG=1`` from the event loop itself (a stuck loop stops pinging and
systemd restarts it), and ``STOPPING=1`` when it stops. Without ``NOTIFY_SOCKET`` nothing is sent.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Mapping


class Notifier:
    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        path = environ.get("NOTIFY_SOCKET") or None
        if path is not None and path.startswith("@"):
            path = "\0" + path[1:]  # the abstract namespace
        self._address = path
        self._socket: socket.socket | None = None
        usec = environ.get("WATCHDOG_USEC", "")
        pid = environ.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        self.watchdog_interval_s = int(usec) / 2e6 if usec.isdigit() and mine else None

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def send(self, *assignments: str) -> bool:
        """Send ``KEY=value`` lines as one datagram; False when there is nobody to tell."""
        if self._address is None:
            return False
        if self._socket is None:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        message = "\n".join(a.replace("\n", " ") for a in assignments).encode()
        try:
            self._socket.sendto(message, self._address)
        except OSError:
            return False  # the manager went away: the daemon serves on regardless
        return True

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


class Watchdog:
    """Calls ``ping`` now and every ``interval_s`` from the event loop, until cancelled.

    Timers run on the loop, so a loop stuck in a callback stops the pings: that is the point.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, interval_s: float, ping: Callable[[], object]
    ) -> None:
        self._loop = loop
        self._interval_s = interval_s
        self._ping = ping
        self._handle = loop.call_soon(self._tick)

    def _tick(self) -> None:
        self._ping()
        self._handle = self._loop.call_later(self._interval_s, self._tick)

    def cancel(self) -> None:
        self._handle.cancel()
