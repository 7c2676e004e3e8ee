"""Change notifications: reading events and matching secrets offline, then SQS on a real moto
server feeding a real KeyManager.

Each test waits on what it can observe (a log event, a queue's depth), never a fixed delay.
The source long-polls for one second here, so that closing it never waits long.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest

from sidkeyd.config import AwsSourceConfig, EnvironmentConfig, RefreshConfig
from sidkeyd.keystore import KeyStore
from sidkeyd.rotation import KeyManager
from sidkeyd.sources import WatchingSource
from sidkeyd.sources.aws import AwsSource, parse_change_event
from support.engine import make_manager
from support.logs import captured_events
from support.moto_server import (
    ACCOUNT,
    MotoEndpoint,
    change_event,
    closed_port_url,
    sns_wrapped,
    source_config,
)

pytestmark = pytest.mark.aws

KEY_ONE = "aws-notify-key-one-5a1d-not-real"
KEY_TWO = "aws-notify-key-two-7f3c-not-real"
NAME = "smileid/production"
ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:smileid/production-AbC123"
PARTIAL_ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:smileid/production"
WAIT_S = 15.0
Logs = list[dict[str, Any]]


def notify_source(endpoint_url: str, queue_url: str) -> AwsSource:
    """An AwsSource reading change events from ``queue_url``, long-polling for one second."""
    return AwsSource(source_config(endpoint_url, notify_queue_url=queue_url), notify_wait_s=1)


def payload(api_key: str) -> str:
    return json.dumps({"api_key": api_key, "partner_id": "085"})


@pytest.fixture
def secret(moto_endpoint: MotoEndpoint) -> tuple[str, str]:
    """A JSON secret holding KEY_ONE: (name, VersionId)."""
    name = moto_endpoint.secret_name("notify")
    created = moto_endpoint.client().create_secret(Name=name, SecretString=payload(KEY_ONE))
    return name, created["VersionId"]


@pytest.fixture
def queue(moto_endpoint: MotoEndpoint) -> str:
    return moto_endpoint.queue()


@pytest.fixture
def source(moto_endpoint: MotoEndpoint, queue: str) -> Iterator[AwsSource]:
    aws = notify_source(moto_endpoint.url, queue)
    yield aws
    aws.close()


def rotate(moto_endpoint: MotoEndpoint, name: str) -> str:
    put = moto_endpoint.client().put_secret_value(SecretId=name, SecretString=payload(KEY_TWO))
    return put["VersionId"]


def send(moto_endpoint: MotoEndpoint, queue: str, message: dict[str, Any] | str) -> None:
    text = message if isinstance(message, str) else json.dumps(message)
    moto_endpoint.sqs().send_message(QueueUrl=queue, MessageBody=text)


def manager_for(
    aws: AwsSource, secret: str, interval: timedelta = timedelta(hours=1)
) -> tuple[KeyManager, KeyStore]:
    """A KeyManager with one environment on ``aws`` and a real KeyStore, not started."""
    refresh = RefreshConfig(interval=interval, jitter=0.0)
    environment = EnvironmentConfig(
        name="sandbox", source="aws", secret=secret, partner_id="085", refresh=refresh
    )
    return make_manager({"aws": aws}, environment)


def found(logs: Logs, event: str, match: dict[str, Any]) -> dict[str, Any] | None:
    for entry in list(logs):
        if entry["event"] == event and all(entry.get(k) == v for k, v in match.items()):
            return entry
    return None


async def logged(logs: Logs, event: str, **match: Any) -> dict[str, Any]:
    """Wait (bounded) until ``event`` with fields ``match`` was logged, from any thread."""
    deadline = time.monotonic() + WAIT_S
    while (entry := found(logs, event, match)) is None:
        if time.monotonic() > deadline:
            raise AssertionError(f"no {event} {match} within {WAIT_S}s: {logs}")
        await asyncio.sleep(0.02)
    return entry


def logged_sync(logs: Logs, event: str, **match: Any) -> dict[str, Any]:
    return asyncio.run(logged(logs, event, **match))


def with_manager(
    aws: AwsSource, secret: str, body: Callable[[KeyManager, KeyStore, Logs], Any], **kw: Any
) -> Logs:
    """Start a manager on ``aws`` (its watcher too), run ``body`` under captured logs, stop."""
    manager, store = manager_for(aws, secret, **kw)

    async def run() -> Logs:
        with captured_events() as logs:
            await manager.start()
            try:
                await body(manager, store, logs)
            finally:
                await manager.stop()
        return logs

    return asyncio.run(run())


@pytest.fixture
def offline() -> AwsSource:
    """A source that never calls AWS: for matching and parsing."""
    return AwsSource(AwsSourceConfig(name="aws", region="eu-west-1"))


def as_body(event: dict[str, Any]) -> str:
    return json.dumps(event)


# -- offline: matching secrets ---------------------------------------------------------------


def test_the_aws_source_is_a_watching_source(offline: AwsSource) -> None:
    """The engine recognises the source as one it can watch."""
    assert isinstance(offline, WatchingSource)


def test_same_name_matches(offline: AwsSource) -> None:
    """A name matches itself."""
    assert offline.matches(NAME, NAME)


def test_other_name_does_not_match(offline: AwsSource) -> None:
    """An event about another secret concerns nobody holding this one."""
    assert not offline.matches(NAME, "smileid/sandbox")


def test_name_that_only_starts_alike_does_not_match(offline: AwsSource) -> None:
    """smileid/production-eu is not smileid/production."""
    assert not offline.matches(NAME, "smileid/production-eu")


def test_event_arn_matches_the_configured_name(offline: AwsSource) -> None:
    """A full ARN (random suffix included) in the event matches the configured name."""
    assert offline.matches(NAME, ARN)


def test_event_name_matches_the_configured_arn(offline: AwsSource) -> None:
    """An event naming the secret by name matches a configured full ARN."""
    assert offline.matches(ARN, NAME)


def test_event_arn_matches_a_configured_partial_arn(offline: AwsSource) -> None:
    """A configured ARN without the random suffix matches the event's full ARN."""
    assert offline.matches(PARTIAL_ARN, ARN)


def test_arn_of_another_account_does_not_match(offline: AwsSource) -> None:
    """Two ARNs must agree on the account, not only on the name."""
    other = ARN.replace("123456789012", "210987654321")
    assert not offline.matches(ARN, other)


def test_arn_of_another_secret_does_not_match_the_name(offline: AwsSource) -> None:
    """The name inside the event's ARN must be the configured name."""
    assert not offline.matches(NAME, ARN.replace("production", "sandbox"))


def test_name_ending_like_a_suffix_matches_its_full_arn(offline: AwsSource) -> None:
    """A name that itself ends in -xxxxxx (six characters) still matches its full ARN."""
    name = "smileid/api-secret"
    full = f"arn:aws:secretsmanager:eu-west-1:123456789012:secret:{name}-Zz9Yy8"
    assert offline.matches(name, full)


# -- offline: reading events --------------------------------------------------------------------


@pytest.mark.parametrize("event_name", ["PutSecretValue", "UpdateSecretVersionStage"])
def test_api_call_event_names_the_request_secret(event_name: str) -> None:
    """CloudTrail API calls name the secret in requestParameters.secretId."""
    assert (event_name, NAME) == parse_change_event(as_body(change_event(NAME, event_name)))


def test_rotation_succeeded_names_the_secret_of_the_service_event() -> None:
    """RotationSucceeded names the secret in additionalEventData.SecretId."""
    assert ("RotationSucceeded", ARN) == parse_change_event(
        as_body(change_event(ARN, "RotationSucceeded"))
    )


def test_sns_wrapped_event_is_unwrapped() -> None:
    """An SNS notification carrying the event (no raw delivery) is read like the event."""
    assert ("PutSecretValue", NAME) == parse_change_event(as_body(sns_wrapped(change_event(NAME))))


def test_read_event_is_ignored() -> None:
    """A GetSecretValue event changes nothing and must not force a read (it would loop)."""
    assert ("GetSecretValue", None) == parse_change_event(
        as_body(change_event(NAME, "GetSecretValue"))
    )


def test_failed_call_is_ignored() -> None:
    """A PutSecretValue that failed (CloudTrail errorCode) changed nothing."""
    event = change_event(NAME)
    event["detail"]["errorCode"] = "AccessDenied"
    assert ("PutSecretValue", None) == parse_change_event(as_body(event))


def test_event_of_another_service_is_ignored() -> None:
    """Only aws.secretsmanager events concern keys."""
    event = change_event(NAME)
    event["source"] = "aws.ssm"
    assert ("PutSecretValue", None) == parse_change_event(as_body(event))


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("not json at all", "body is not JSON"),
        ("[1, 2]", "body is not a JSON object"),
        ('{"hello": "world"}', "not an EventBridge event: no detail object"),
        ('{"detail": {}}', "not a CloudTrail event: no detail.eventName"),
        ('{"detail": {"eventName": "PutSecretValue"}}', "PutSecretValue event names no secret"),
        ('{"Type": "Notification", "Message": "oops"}', "SNS Message is not JSON"),
    ],
)
def test_unreadable_body_is_a_value_error(text: str, reason: str) -> None:
    """Anything not such an event raises ValueError with a reason that quotes no body."""
    with pytest.raises(ValueError, match=f"^{re.escape(reason)}$"):
        parse_change_event(text)


# -- watch without a queue -------------------------------------------------------------------


def test_watch_without_a_queue_starts_nothing(offline: AwsSource) -> None:
    """With no notify_queue_url, watch() starts no thread and never calls back."""
    before = set(threading.enumerate())
    offline.watch(lambda _secret: pytest.fail("called back without a queue"))
    assert set() == set(threading.enumerate()) - before


# -- the SQS client ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("queue_url", "region"),
    [
        ("https://sqs.eu-central-1.amazonaws.com/123456789012/keys", "eu-central-1"),
        ("https://eu-central-1.queue.amazonaws.com/123456789012/keys", "eu-central-1"),
        ("http://127.0.0.1:5000/123456789012/keys", "eu-west-1"),
    ],
)
def test_sqs_client_uses_the_queue_region(
    monkeypatch: pytest.MonkeyPatch, queue_url: str, region: str
) -> None:
    """An AWS queue URL names its region; any other URL falls back on the primary region."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    config = AwsSourceConfig(name="aws", region="eu-west-1", notify_queue_url=queue_url)
    source = AwsSource(config)
    try:
        assert region == source.sqs_client().meta.region_name
    finally:
        source.close()


@pytest.mark.parametrize(
    ("queue_url", "endpoint"),
    [
        (
            "https://sqs.eu-central-1.amazonaws.com/123456789012/keys",
            "https://sqs.eu-central-1.amazonaws.com",
        ),
        (
            "https://sqs.cn-north-1.amazonaws.com.cn/123456789012/keys",
            "https://sqs.cn-north-1.amazonaws.com.cn",
        ),
        ("http://127.0.0.1:5000/123456789012/keys", "http://127.0.0.1:5000"),
    ],
)
def test_sqs_endpoint_comes_from_the_queue_url_not_endpoint_url(
    monkeypatch: pytest.MonkeyPatch, queue_url: str, endpoint: str
) -> None:
    """endpoint_url is Secrets Manager's (FIPS, VPC): an AWS queue gets botocore's endpoint for
    its region, any other queue URL its own scheme, host and port."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    config = AwsSourceConfig(
        name="aws",
        region="eu-west-1",
        endpoint_url="https://secretsmanager-fips.{region}.amazonaws.com",
        notify_queue_url=queue_url,
    )
    source = AwsSource(config)
    try:
        assert endpoint == source.sqs_client().meta.endpoint_url
    finally:
        source.close()


def test_queue_is_polled_where_it_is_whatever_endpoint_url_says(
    moto_endpoint: MotoEndpoint, queue: str
) -> None:
    """With endpoint_url elsewhere (nothing listening there), the queue on moto is still read."""
    aws = notify_source(closed_port_url(), queue)
    changes: list[str] = []
    send(moto_endpoint, queue, change_event(NAME))
    try:
        with captured_events() as logs:
            aws.watch(changes.append)
            logged_sync(logs, "aws.notify_deleted")
    finally:
        aws.close()
    assert [NAME] == changes


# -- a change event forces a check -------------------------------------------------------------


def test_change_event_rotates_the_key_at_once(
    source: AwsSource, moto_endpoint: MotoEndpoint, queue: str, secret: tuple[str, str]
) -> None:
    """PutSecretValue, then its event in the queue: the engine rotates with trigger notify."""
    name, old_version = secret
    outcome: dict[str, Any] = {}

    async def body(manager: KeyManager, store: KeyStore, logs: Logs) -> None:
        await logged(logs, "aws.notify_started")
        outcome["new"] = rotate(moto_endpoint, name)
        send(moto_endpoint, queue, change_event(name))
        outcome["rotated"] = await logged(logs, "key.rotated")
        outcome["signing"] = manager.signing_key("sandbox").version

    with_manager(source, name, body)
    rotated = outcome["rotated"]
    assert ("notify", old_version, outcome["new"], outcome["new"]) == (
        rotated["trigger"],
        rotated["old_version"],
        rotated["new_version"],
        outcome["signing"],
    )


def test_forced_check_names_the_changed_secret(
    source: AwsSource, moto_endpoint: MotoEndpoint, queue: str, secret: tuple[str, str]
) -> None:
    """refresh.forced says trigger notify and which secret the event named."""
    name, _ = secret

    async def body(manager: KeyManager, store: KeyStore, logs: Logs) -> None:
        send(moto_endpoint, queue, change_event(name))
        await logged(logs, "aws.notify_deleted")
        await manager.settle()

    logs = with_manager(source, name, body)
    forced = [e for e in logs if e["event"] == "refresh.forced"]
    assert [("notify", name)] == [(e["trigger"], e["secret"]) for e in forced]


def test_handled_messages_are_deleted(
    source: AwsSource, moto_endpoint: MotoEndpoint, queue: str, secret: tuple[str, str]
) -> None:
    """Once the events are handled the queue is empty: nothing is received twice."""
    name, _ = secret

    async def body(manager: KeyManager, store: KeyStore, logs: Logs) -> None:
        send(moto_endpoint, queue, change_event(name))
        send(moto_endpoint, queue, change_event(name, "UpdateSecretVersionStage"))
        # The two may come in one batch or in two: wait until both were deleted.
        deadline = time.monotonic() + WAIT_S
        while deleted(logs) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await manager.settle()

    with_manager(source, name, body)
    assert 0 == moto_endpoint.queue_depth(queue)


def deleted(logs: Logs) -> int:
    """Messages the watcher has deleted so far, over every batch."""
    return sum(e["count"] for e in list(logs) if e["event"] == "aws.notify_deleted")


def test_event_for_another_secret_does_not_force_a_check(
    source: AwsSource, moto_endpoint: MotoEndpoint, queue: str, secret: tuple[str, str]
) -> None:
    """An event about a secret no environment holds is consumed and forces nothing."""
    name, _ = secret

    async def body(manager: KeyManager, store: KeyStore, logs: Logs) -> None:
        send(moto_endpoint, queue, change_event(moto_endpoint.secret_name("other")))
        await logged(logs, "aws.notify_deleted")
        await manager.settle()

    logs = with_manager(source, name, body)
    assert ([], 0) == (
        [e for e in logs if e["event"] == "refresh.forced"],
        moto_endpoint.queue_depth(queue),
    )


def test_rotation_succeeded_with_an_arn_forces_a_check(
    source: AwsSource, moto_endpoint: MotoEndpoint, queue: str, secret: tuple[str, str]
) -> None:
    """RotationSucceeded names the secret by its full ARN; the environment holds it by name."""
    name, _ = secret
    arn = moto_endpoint.secret_arn(name)

    async def body(manager: KeyManager, store: KeyStore, logs: Logs) -> None:
        rotate(moto_endpoint, name)
        send(moto_endpoint, queue, change_event(arn, "RotationSucceeded"))
        await logged(logs, "key.rotated", trigger="notify")

    logs = with_manager(source, name, body)
    forced = [e for e in logs if e["event"] == "refresh.forced"]
    assert [arn] == [e["secret"] for e in forced]


def test_sns_wrapped_event_forces_a_check(
    source: AwsSource, moto_endpoint: MotoEndpoint, queue: str, secret: tuple[str, str]
) -> None:
    """An event fanned out through SNS (not raw delivery) works the same."""
    name, _ = secret
    outcome: dict[str, Any] = {}

    async def body(manager: KeyManager, store: KeyStore, logs: Logs) -> None:
        outcome["new"] = rotate(moto_endpoint, name)
        send(moto_endpoint, queue, sns_wrapped(change_event(name)))
        outcome["rotated"] = await logged(logs, "key.rotated", trigger="notify")

    with_manager(source, name, body)
    assert outcome["new"] == outcome["rotated"]["new_version"]


def test_one_batch_naming_a_secret_twice_forces_one_check(
    source: AwsSource, moto_endpoint: MotoEndpoint, queue: str, secret: tuple[str, str]
) -> None:
    """A rotation's several events received together make one on_change per secret."""
    name, _ = secret
    changes: list[str] = []
    sqs = moto_endpoint.sqs()
    sqs.send_message_batch(
        QueueUrl=queue,
        Entries=[
            {"Id": str(i), "MessageBody": json.dumps(change_event(name, event))}
            for i, event in enumerate(("PutSecretValue", "UpdateSecretVersionStage"))
        ],
    )
    with captured_events() as logs:
        source.watch(changes.append)
        deleted = logged_sync(logs, "aws.notify_deleted")
    assert ([name], 2) == (changes, deleted["count"])


def test_unparseable_message_is_logged_and_deleted(
    source: AwsSource, moto_endpoint: MotoEndpoint, queue: str
) -> None:
    """A body that is not an event is logged with a reason (not the body) and deleted."""
    changes: list[str] = []
    send(moto_endpoint, queue, "definitely not an event")
    with captured_events() as logs:
        source.watch(changes.append)
        logged_sync(logs, "aws.notify_deleted")
    unparseable = [e for e in logs if e["event"] == "aws.notify_unparseable"]
    assert (["body is not JSON"], [], 0) == (
        [e["reason"] for e in unparseable],
        changes,
        moto_endpoint.queue_depth(queue),
    )


# -- a broken queue ----------------------------------------------------------------------------


def test_missing_queue_is_logged_and_the_schedule_still_rotates(
    moto_endpoint: MotoEndpoint, secret: tuple[str, str]
) -> None:
    """A queue that does not exist logs aws.notify_failed; the schedule picks up a rotation."""
    name, _ = secret
    missing = f"{moto_endpoint.url}/{ACCOUNT}/sidkeyd-no-such-queue"
    aws = notify_source(moto_endpoint.url, missing)
    outcome: dict[str, Any] = {}

    async def body(manager: KeyManager, store: KeyStore, logs: Logs) -> None:
        outcome["failed"] = await logged(logs, "aws.notify_failed")
        outcome["new"] = rotate(moto_endpoint, name)
        outcome["rotated"] = await logged(logs, "key.rotated", trigger="schedule")

    with_manager(aws, name, body, interval=timedelta(seconds=1))
    failed = outcome["failed"]
    assert ("ReceiveMessage", outcome["new"]) == (
        failed["operation"],
        outcome["rotated"]["new_version"],
    )
    assert "QueueDoesNotExist" in failed["reason"] or "NonExistentQueue" in failed["reason"]


def test_unreachable_queue_is_retried_with_backoff(moto_endpoint: MotoEndpoint) -> None:
    """Nothing listening: each failure is logged with a retry delay and polling goes on."""
    queue = f"{closed_port_url()}/{ACCOUNT}/sidkeyd-unreachable"
    aws = notify_source(moto_endpoint.url, queue)
    try:
        with captured_events() as logs:
            aws.watch(lambda _secret: None)
            logged_sync(logs, "aws.notify_failed", consecutive_failures=2)
    finally:
        aws.close()
    failures = [e for e in logs if e["event"] == "aws.notify_failed"]
    assert ("endpoint_unreachable", "transient", True) == (
        failures[0]["error_code"],
        failures[0]["error_kind"],
        failures[0]["retry_in_s"] >= 1.0,
    )


# -- lifecycle ---------------------------------------------------------------------------------


def test_close_stops_the_poller(source: AwsSource) -> None:
    """close() ends the polling thread, which says so."""
    with captured_events() as logs:
        source.watch(lambda _secret: None)
        logged_sync(logs, "aws.notify_started")
        source.close()
        stopped = logged_sync(logs, "aws.notify_stopped")
    assert "aws" == stopped["source"]


def test_sqs_client_is_built_once_on_the_endpoint(
    source: AwsSource, moto_endpoint: MotoEndpoint
) -> None:
    """The SQS client comes from the source's session, once, on the configured endpoint_url."""
    sqs = source.sqs_client()
    assert (sqs, moto_endpoint.url, "us-east-1") == (
        source.sqs_client(),
        sqs.meta.endpoint_url,
        sqs.meta.region_name,
    )
