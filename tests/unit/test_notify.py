"""The sd_notify sender: addresses, the watchdog interval, and a manager that went away."""

from __future__ import annotations

import os

from sidkeyd.notify import Notifier


def test_the_watchdog_interval_is_half_watchdog_usec_for_this_pid_only() -> None:
    """WATCHDOG_USEC=2s: ping every 1s; a WATCHDOG_PID of another process: no pings."""
    mine = Notifier(
        {"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    )
    other = Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"})
    assert (1.0, None) == (mine.watchdog_interval_s, other.watchdog_interval_s)


def test_a_missing_manager_socket_is_no_error() -> None:
    """A NOTIFY_SOCKET nobody listens on: send() says False, nothing raises."""
    notifier = Notifier({"NOTIFY_SOCKET": "@sidkeyd-test-nobody-listens-here"})
    assert (True, False) == (notifier.enabled, notifier.send("READY=1"))
    notifier.close()


def test_without_notify_socket_it_is_disabled() -> None:
    """No NOTIFY_SOCKET: disabled, and send() does nothing."""
    notifier = Notifier({})
    assert (False, False, None) == (
        notifier.enabled,
        notifier.send("READY=1"),
        notifier.watchdog_interval_s,
    )
