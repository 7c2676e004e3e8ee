"""Issue 9.6 and 9.7: a bounded shutdown with a hung backend, every signal handled, every line
structured, refusals aggregated, and UTC offsets no place uses refused.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from support.configs import file_config, key_file
from support.daemon import Daemon, refused
from support.moto_server import MotoEndpoint, OutageFront

StartDaemon = Callable[..., Daemon]

KEY = "shutdown-e2e-key-5c1d-not-real"
HUNG_CONFIG = """
[server]
socket = "{socket}"
shutdown_timeout = "2s"

[refresh]
@REFRESH@

[log]
format = "json"

[sources.aws]
type = "aws"
region = "us-east-1"
endpoint_url = "@ENDPOINT@"
max_attempts = 1
read_timeout = "120s"

[environments.sandbox]
source = "aws"
secret = "@SECRET@"
partner_id = "085"
"""
# Far longer than the shutdown budget (2s) and than any start-up on this machine, far shorter
# than the backend call's own timeout (120s): exiting within it is the bounded shutdown.
EXIT_BOUND_S = 30


@pytest.fixture
def front(moto_endpoint: MotoEndpoint) -> Iterator[OutageFront]:
    with moto_endpoint.outage_front() as front:
        yield front


def start_hung(
    start_daemon: StartDaemon,
    moto_endpoint: MotoEndpoint,
    front: OutageFront,
    refresh: str,
    tables: str = "",
) -> Daemon:
    """A daemon that loaded its key, then a backend that holds every request unanswered;
    ``tables``: more config tables."""
    name = moto_endpoint.secret_name("hung")
    moto_endpoint.client().create_secret(Name=name, SecretString=KEY)
    config = (
        HUNG_CONFIG.replace("@REFRESH@", refresh)
        .replace("@ENDPOINT@", front.url)
        .replace("@SECRET@", name)
    )
    daemon = start_daemon(config + tables)
    daemon.wait_for_event("key.loaded", environment="sandbox")
    front.hanging = True
    return daemon


def stop_within_bound(daemon: Daemon) -> int:
    assert daemon.process is not None
    daemon.signal(signal.SIGTERM)
    try:
        return daemon.process.wait(EXIT_BOUND_S)
    except subprocess.TimeoutExpired:
        daemon.process.kill()
        raise AssertionError("the daemon outlived its shutdown budget") from None


@pytest.mark.aws
def test_shutdown_is_bounded_by_shutdown_timeout_with_a_backend_call_hung(
    start_daemon: StartDaemon, moto_endpoint: MotoEndpoint, front: OutageFront
) -> None:
    """SIGTERM while a forced check hangs on the backend: exit 0, stopped, socket removed."""
    daemon = start_hung(start_daemon, moto_endpoint, front, 'interval = "24h"')
    daemon.signal(signal.SIGHUP)
    assert front.held.wait(EXIT_BOUND_S)

    code = stop_within_bound(daemon)

    assert (0, False) == (code, daemon.socket_path.exists())
    daemon.wait_for_event("daemon.stopped")


@pytest.mark.aws
def test_a_sighup_while_the_sources_close_does_not_kill_the_stopping_daemon(
    start_daemon: StartDaemon, moto_endpoint: MotoEndpoint, front: OutageFront, tmp_path: Path
) -> None:
    """logrotate's SIGHUP lands once the signal handlers are gone (the socket removed), while
    the sources close: the daemon exits 0 with its trail closed; SIGHUP's default action
    used to kill it (exit by signal 1, whatever of the stop was left undone)."""
    audit = tmp_path / "audit.jsonl"
    tables = f'\n[audit]\npath = "{audit}"\n'
    daemon = start_hung(start_daemon, moto_endpoint, front, 'interval = "24h"', tables)
    daemon.signal(signal.SIGHUP)
    assert front.held.wait(EXIT_BOUND_S)
    daemon.signal(signal.SIGTERM)
    daemon.wait_for_event("daemon.stopping")
    daemon._wait(lambda: True if not daemon.socket_path.exists() else None, "socket gone", 30)
    daemon.signal(signal.SIGHUP)

    assert daemon.process is not None
    code = daemon.process.wait(EXIT_BOUND_S)

    events = [json.loads(line)["event"] for line in audit.read_text().splitlines()]
    assert (0, ["audit.closed", "audit.checkpoint"]) == (code, events[-2:])
    daemon.wait_for_event("daemon.stopped")


@pytest.mark.aws
def test_a_scheduled_check_cancelled_at_shutdown_writes_only_json_lines(
    start_daemon: StartDaemon, moto_endpoint: MotoEndpoint, front: OutageFront
) -> None:
    """A scheduled check in flight at SIGTERM: no APScheduler text or traceback on stderr."""
    daemon = start_hung(
        start_daemon, moto_endpoint, front, 'interval = "1s"\njitter = 0.0\nbackoff_max = "1s"'
    )
    assert front.held.wait(EXIT_BOUND_S)  # the schedule's own check is now hung

    stop_within_bound(daemon)

    not_json = []
    for line in daemon.log_lines():  # stdout and stderr both
        try:
            parsed = json.loads(line)
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            not_json.append(line)
    assert [] == not_json


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM])
def test_stray_signals_are_logged_and_ignored(start_daemon: StartDaemon, sig: int) -> None:
    """SIGUSR1/SIGUSR2/SIGALRM no longer kill the daemon: it says so and keeps signing."""
    daemon = start_daemon(file_config(), files=key_file(KEY))
    daemon.signal(sig)
    event = daemon.wait_for_event("signal.ignored")
    assert (signal.Signals(sig).name, "sandbox") == (
        event["signal"],
        daemon.client().sign("sandbox")["environment"],
    )


def test_sigquit_stops_gracefully(start_daemon: StartDaemon) -> None:
    """SIGQUIT is a stop like SIGTERM: daemon.stopped, exit 0, the socket removed."""
    daemon = start_daemon(file_config(), files=key_file(KEY))
    assert daemon.process is not None
    daemon.signal(signal.SIGQUIT)
    code = daemon.process.wait(EXIT_BOUND_S)
    daemon.wait_for_event("daemon.stopped")
    assert (0, False) == (code, daemon.socket_path.exists())


def test_a_refused_flood_writes_two_lines_not_thousands(start_daemon: StartDaemon) -> None:
    """300 refused signatures from one uid: one request.rejected, one count of the 299 others."""
    allow = "[environments.sandbox.allow]\nuids = [4242]\n"  # not the test's uid
    daemon = start_daemon(file_config(extra=allow), files=key_file(KEY))
    client = daemon.client()
    statuses = {refused(lambda: client.sign("sandbox")) for _ in range(300)}
    daemon.stop()  # the window still open is counted at shutdown

    counted = daemon.wait_for_event("request.rejected_repeated")
    assert {(403, "forbidden")} == statuses
    assert (1, 299) == (
        len(daemon.events("request.rejected", reason="forbidden")),
        counted["repeated"],
    )


def test_an_offset_no_place_uses_is_refused(start_daemon: StartDaemon) -> None:
    """Now, written at +23:59, is 400 invalid_timestamp; the same instant at +14:00 signs."""
    daemon = start_daemon(file_config(), files=key_file(KEY))
    client = daemon.client()
    now = datetime.now(UTC)

    def at(hours: int, minutes: int) -> str:
        return now.astimezone(timezone(timedelta(hours=hours, minutes=minutes))).isoformat()

    assert (400, "invalid_timestamp") == refused(lambda: client.sign("sandbox", at(23, 59)))
    assert at(14, 0) == client.sign("sandbox", at(14, 0))["timestamp"]
