"""Issue 5 against moto: the daemon as a process, Secrets Manager behind a front it can break.

A rotation noticed through a client's report, a burst of reports costing one GetSecretValue on
the wire, an outage (degraded, then healthy), a denied read (revoked after the grace, restored
after access is), and a rotation pushed through SQS (trigger notify). Every wait is on a logged
event or a daemon answer. SIGHUP is covered in test_aws_e2e.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from support import signatures
from support.daemon import Daemon, refused
from support.moto_server import REGION, MotoEndpoint, OutageFront, change_event
from support.schedules import FAST_SCHEDULE, NO_SCHEDULE

pytestmark = pytest.mark.aws

FIRST_KEY = "aws-rotation-e2e-key-one-6b2f-not-real"
ROTATED_KEY = "aws-rotation-e2e-key-two-c81a-not-real"
ALL_KEYS = (FIRST_KEY, ROTATED_KEY)
PARTNER_ID = "085"

CONFIG = """
[server]
socket = "{socket}"

[refresh]
@REFRESH@

[log]
format = "json"
level = "debug"

[sources.aws]
type = "aws"
region = "us-east-1"
endpoint_url = "@ENDPOINT@"
max_attempts = 1
connect_timeout = "2s"
read_timeout = "5s"
@SOURCE@

[environments.sandbox]
source = "aws"
secret = "@SECRET@"
"""

StartDaemon = Callable[..., Daemon]


def expected_signature(key: str, timestamp: str, partner_id: str = PARTNER_ID) -> str:
    return signatures.expected_signature(key, timestamp, partner_id)


def signed_with(key: str, signed: dict[str, Any]) -> bool:
    """Whether the daemon's ``signed`` answer carries the HMAC of ``key`` (computed here)."""
    signature: str = signed["signature"]
    return expected_signature(key, signed["timestamp"]) == signature


def payload(api_key: str) -> str:
    return json.dumps({"api_key": api_key, "partner_id": PARTNER_ID})


@pytest.fixture
def secret(moto_endpoint: MotoEndpoint) -> tuple[str, str]:
    """A JSON secret holding FIRST_KEY: (name, VersionId)."""
    name = moto_endpoint.secret_name("rotation-e2e")
    created = moto_endpoint.client().create_secret(Name=name, SecretString=payload(FIRST_KEY))
    return name, created["VersionId"]


@pytest.fixture
def front(moto_endpoint: MotoEndpoint) -> Iterator[OutageFront]:
    """A front to moto that counts operations and can drop or deny requests."""
    with moto_endpoint.outage_front() as front:
        yield front


def start(
    start_daemon: StartDaemon, endpoint: str, secret: str, refresh: str, source: str = ""
) -> Daemon:
    config = (
        CONFIG.replace("@REFRESH@", refresh)
        .replace("@ENDPOINT@", endpoint)
        .replace("@SECRET@", secret)
        .replace("@SOURCE@", source)
    )
    daemon = start_daemon(config)
    daemon.wait_for_event("key.loaded", environment="sandbox")
    return daemon


def rotate(moto_endpoint: MotoEndpoint, name: str) -> str:
    """PutSecretValue with ROTATED_KEY; returns the new VersionId."""
    put = moto_endpoint.client().put_secret_value(SecretId=name, SecretString=payload(ROTATED_KEY))
    return put["VersionId"]


# -- a rotation noticed through a report -------------------------------------------------


def test_report_of_the_old_version_makes_the_next_signature_use_the_new_one(
    start_daemon: StartDaemon, moto_endpoint: MotoEndpoint, secret: tuple[str, str]
) -> None:
    """PutSecretValue, then POST /v1/report of the old VersionId: the next signature is new."""
    name, old_version = secret
    daemon = start(start_daemon, moto_endpoint.url, name, NO_SCHEDULE)
    client = daemon.client()
    new_version = rotate(moto_endpoint, name)  # no SIGHUP, no schedule: only the report

    answer = client.report("sandbox", old_version, 401)
    signed = client.sign("sandbox")
    rotated = daemon.wait_for_event("key.rotated", environment="sandbox")

    assert {"checked": True, "changed": True, "key_version": new_version, "reason": "checked"} == {
        k: answer[k] for k in ("checked", "changed", "key_version", "reason")
    }
    assert (new_version, True) == (signed["key_version"], signed_with(ROTATED_KEY, signed))
    assert ("report", old_version, new_version) == (
        rotated["trigger"],
        rotated["old_version"],
        rotated["new_version"],
    )
    daemon.assert_no_secret_in_logs(ALL_KEYS)


def test_a_burst_of_reports_reads_the_secret_once(
    start_daemon: StartDaemon,
    moto_endpoint: MotoEndpoint,
    front: OutageFront,
    secret: tuple[str, str],
) -> None:
    """100 reports from 10 connections at once: one GetSecretValue reaches Secrets Manager."""
    name, old_version = secret
    daemon = start(start_daemon, front.url, name, NO_SCHEDULE)
    clients = [daemon.client() for _ in range(10)]
    new_version = rotate(moto_endpoint, name)
    reads_before = front.count("GetSecretValue")

    with ThreadPoolExecutor(10) as pool:
        answers = list(
            pool.map(lambda i: clients[i % 10].report("sandbox", old_version, 401), range(100))
        )
    reads = front.count("GetSecretValue") - reads_before
    signed = clients[0].sign("sandbox")

    assert 1 >= reads
    assert 1 == len(daemon.events("refresh.forced", trigger="report"))
    assert {new_version} == {a["key_version"] for a in answers}
    assert (new_version, True) == (signed["key_version"], signed_with(ROTATED_KEY, signed))
    daemon.assert_no_secret_in_logs(ALL_KEYS)


# -- outages -----------------------------------------------------------------------------


def test_backend_down_degrades_while_signing_continues_and_recovers(
    start_daemon: StartDaemon, front: OutageFront, secret: tuple[str, str]
) -> None:
    """Secrets Manager unreachable: signatures flow, status degraded; reachable: healthy."""
    name, version = secret
    daemon = start(start_daemon, front.url, name, FAST_SCHEDULE)
    client = daemon.client()

    front.down.add(REGION)
    failed = daemon.wait_for_event("key.refresh_failed", environment="sandbox")
    signed = client.sign("sandbox")
    degraded = client.status()["environments"]["sandbox"]
    health_status, health = client.request("GET", "/v1/health")
    # Every check fails while down, so the next successful one comes after the front is back.
    checks = len(daemon.events("key.check", environment="sandbox"))
    front.down.discard(REGION)
    daemon.wait_for_event("key.check", count=checks + 1, environment="sandbox")
    recovered = client.status()["environments"]["sandbox"]

    assert ("transient", "connection_closed", version) == (
        failed["error_kind"],
        failed["error_code"],
        failed["serving_version"],
    )
    assert (version, True) == (signed["key_version"], signed_with(FIRST_KEY, signed))
    assert ("degraded", "transient", "connection_closed") == (
        degraded["health"],
        degraded["last_error"]["kind"],
        degraded["last_error"]["code"],
    )
    assert "connection_closed" in degraded["reason"]
    assert (200, "degraded") == (health_status, health["environments"]["sandbox"]["health"])
    assert ("healthy", None, 0, version) == (
        recovered["health"],
        recovered["last_error"],
        recovered["consecutive_failures"],
        recovered["key_version"],
    )
    daemon.assert_no_secret_in_logs(ALL_KEYS)


def test_access_denied_revokes_the_key_after_the_grace_until_access_is_back(
    start_daemon: StartDaemon, front: OutageFront, secret: tuple[str, str]
) -> None:
    """AccessDeniedException: key.revoked after 1s, 503 key_revoked; access back: signing."""
    name, version = secret
    daemon = start(start_daemon, front.url, name, NO_SCHEDULE + 'revoke_grace = "1s"\n')
    client = daemon.client()

    front.denied.add(name)
    denied = client.refresh("sandbox")["results"][0]
    revoked = daemon.wait_for_event("key.revoked", environment="sandbox")
    revoked_sign = refused(lambda: client.sign("sandbox"))
    health_status, health = client.request("GET", "/v1/health")
    front.denied.discard(name)
    allowed = client.refresh("sandbox")["results"][0]
    restored = daemon.wait_for_event("key.restored", environment="sandbox")
    signed = client.sign("sandbox")

    assert (version, False) == (denied["key_version"], denied["changed"])
    assert "AccessDeniedException" in denied["error"]
    assert version == revoked["key_version"]
    assert (503, "key_revoked") == revoked_sign
    assert (503, "unavailable") == (health_status, health["environments"]["sandbox"]["health"])
    assert (version, None) == (allowed["key_version"], allowed["error"])
    assert ("admin", version) == (restored["trigger"], restored["key_version"])
    assert (version, True) == (signed["key_version"], signed_with(FIRST_KEY, signed))
    failure = daemon.events("key.refresh_failed", environment="sandbox")[0]
    assert ("permanent", "access_denied") == (failure["error_kind"], failure["error_code"])
    daemon.assert_no_secret_in_logs(ALL_KEYS)


# -- a rotation pushed through SQS -------------------------------------------------------


def test_change_event_in_the_queue_rotates_the_key(
    start_daemon: StartDaemon, moto_endpoint: MotoEndpoint, secret: tuple[str, str]
) -> None:
    """PutSecretValue and its EventBridge event on notify_queue_url: key.rotated, trigger notify."""
    name, old_version = secret
    queue = moto_endpoint.queue()
    daemon = start(
        start_daemon, moto_endpoint.url, name, NO_SCHEDULE, f'notify_queue_url = "{queue}"'
    )
    new_version = rotate(moto_endpoint, name)

    moto_endpoint.sqs().send_message(QueueUrl=queue, MessageBody=json.dumps(change_event(name)))
    rotated = daemon.wait_for_event("key.rotated", environment="sandbox", trigger="notify")
    signed = daemon.client().sign("sandbox")

    assert (old_version, new_version) == (rotated["old_version"], rotated["new_version"])
    assert (new_version, True) == (signed["key_version"], signed_with(ROTATED_KEY, signed))
    assert [name] == [e["secret"] for e in daemon.events("refresh.forced", trigger="notify")]
    daemon.assert_no_secret_in_logs(ALL_KEYS)
