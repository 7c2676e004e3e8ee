"""Rotation as clients live it: a rejected signature is reported, the daemon checks now."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_daemon import CONFIG, KEYS, ROTATED_KEY, SANDBOX_KEY

from support.daemon import Daemon
from support.signatures import expected_signature

ALL_KEYS = (SANDBOX_KEY, ROTATED_KEY)


@pytest.fixture
def daemon(start_daemon) -> Daemon:
    daemon = start_daemon(CONFIG, files={"keys.toml": KEYS})
    yield daemon
    daemon.assert_no_secret_in_logs(ALL_KEYS)


def rotate(daemon: Daemon) -> None:
    keys: Path = daemon.config_path.parent / "keys.toml"
    keys.write_text(KEYS.replace(SANDBOX_KEY, ROTATED_KEY))


@dataclass
class FakeSmileResponse:
    status_code: int


def test_send_signed_reports_a_rejection_and_retries_with_the_new_key(daemon: Daemon) -> None:
    """The key rotated at the backend; Smile ID refuses the old one; one retry succeeds."""
    client = daemon.client()
    rotate(daemon)  # no SIGHUP, no schedule: only the report can make the daemon notice
    sent: list[dict] = []

    def smile_id(signed: dict) -> FakeSmileResponse:
        sent.append(signed)
        good = expected_signature(ROTATED_KEY, signed["timestamp"], "085")
        return FakeSmileResponse(200 if signed["signature"] == good else 401)

    assert 200 == client.send_signed("sandbox", smile_id).status_code
    assert 2 == len(sent)
    rotated = daemon.wait_for_event("key.rotated", environment="sandbox", trigger="report")
    assert (rotated["old_version"], rotated["new_version"]) == (
        sent[0]["key_version"],
        sent[1]["key_version"],
    )


def test_report_of_the_current_version_returns_the_new_version(daemon: Daemon) -> None:
    """POST /v1/report answers with the version held after the forced check."""
    client = daemon.client()
    old = client.sign("sandbox")["key_version"]
    rotate(daemon)
    answer = client.report("sandbox", old, 401)
    signed = client.sign("sandbox")
    assert (True, True, signed["key_version"]) == (
        answer["checked"],
        answer["changed"],
        answer["key_version"],
    )
    assert old != signed["key_version"]


def test_a_burst_of_reports_makes_at_most_one_backend_check(daemon: Daemon) -> None:
    """100 reports from 10 connections at once: one forced check, the rest joined or limited."""
    version = daemon.client().sign("sandbox")["key_version"]
    clients = [daemon.client() for _ in range(10)]
    with ThreadPoolExecutor(10) as pool:
        answers = list(
            pool.map(lambda i: clients[i % 10].report("sandbox", version, 401), range(100))
        )
    assert {version} == {a["key_version"] for a in answers}
    assert 1 == len(daemon.events("refresh.forced", trigger="report"))
    assert "rate_limited" in {a["reason"] for a in answers}


def test_report_is_audited_with_the_peer(daemon: Daemon) -> None:
    """key.rejection_reported names the version, the status and the calling process."""
    version = daemon.client().sign("sandbox")["key_version"]
    daemon.client().report("sandbox", version, 401)
    event = daemon.wait_for_event("key.rejection_reported")
    assert (version, "401") == (event["key_version"], event["status"])
    assert "peer_pid" in event


def test_cli_refresh_forces_a_check(daemon: Daemon) -> None:
    """`sidkeyd refresh --env sandbox` picks up a rotation and prints the new version."""
    rotate(daemon)
    result = daemon.cli("refresh", "--env", "sandbox")
    assert 0 == result.returncode, result.stderr
    outcome = json.loads(result.stdout)["results"][0]
    assert (True, outcome["key_version"]) == (
        outcome["changed"],
        daemon.client().sign("sandbox")["key_version"],
    )
    assert daemon.events("refresh.forced", trigger="admin")
