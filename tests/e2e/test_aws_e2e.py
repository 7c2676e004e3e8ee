"""The daemon as a real process with an aws source on a real moto server: sign, rotate, sign."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator

import pytest

from support.daemon import Daemon
from support.moto_server import MotoEndpoint
from support.signatures import expected_signature

pytestmark = pytest.mark.aws

FIRST_KEY = "aws-e2e-first-key-4d2c-not-real"
ROTATED_KEY = "aws-e2e-rotated-key-9e7b-not-real"

CONFIG = """
[server]
socket = "{{socket}}"

[refresh]
interval = "{interval}"

[log]
format = "json"
level = "debug"

[sources.aws]
type = "aws"
region = "us-east-1"
endpoint_url = "{endpoint}"
max_attempts = 1

[environments.sandbox]
source = "aws"
secret = "{secret}"
"""


def payload(api_key: str) -> str:
    return json.dumps({"api_key": api_key, "partner_id": "085"})


@pytest.fixture
def secret(moto_endpoint: MotoEndpoint) -> tuple[str, str]:
    """A JSON secret holding FIRST_KEY: (name, VersionId)."""
    name = moto_endpoint.secret_name("e2e")
    created = moto_endpoint.client().create_secret(Name=name, SecretString=payload(FIRST_KEY))
    return name, created["VersionId"]


def start(start_daemon, moto_endpoint: MotoEndpoint, secret: str, interval: str) -> Daemon:
    config = CONFIG.format(interval=interval, endpoint=moto_endpoint.url, secret=secret)
    return start_daemon(config)


@pytest.fixture
def daemon(start_daemon, moto_endpoint: MotoEndpoint, secret: tuple[str, str]) -> Iterator[Daemon]:
    """A daemon whose schedule never fires during a test: checks are forced."""
    daemon = start(start_daemon, moto_endpoint, secret[0], "1h")
    yield daemon
    daemon.assert_no_secret_in_logs((FIRST_KEY, ROTATED_KEY))


def rotate(moto_endpoint: MotoEndpoint, name: str) -> str:
    put = moto_endpoint.client().put_secret_value(SecretId=name, SecretString=payload(ROTATED_KEY))
    return put["VersionId"]


def test_signs_with_the_key_from_secrets_manager(daemon: Daemon, secret: tuple[str, str]) -> None:
    """The first signature is made with the secret's key and names its VersionId."""
    signed = daemon.client().sign("sandbox")
    assert (expected_signature(FIRST_KEY, signed["timestamp"], "085"), secret[1]) == (
        signed["signature"],
        signed["key_version"],
    )


def test_load_is_logged_as_served_by_the_region(daemon: Daemon, secret: tuple[str, str]) -> None:
    """key.loaded names the VersionId and the region that answered."""
    loaded = daemon.wait_for_event("key.loaded", environment="sandbox")
    assert (secret[1], "us-east-1") == (loaded["key_version"], loaded["served_by"])


def test_rotation_is_picked_up_on_sighup(
    daemon: Daemon, moto_endpoint: MotoEndpoint, secret: tuple[str, str]
) -> None:
    """PutSecretValue then SIGHUP rotates; the next signature is made with the new key."""
    name, old_version = secret
    new_version = rotate(moto_endpoint, name)
    daemon.signal(signal.SIGHUP)
    rotated = daemon.wait_for_event("key.rotated", environment="sandbox")
    signed = daemon.client().sign("sandbox")
    assert (old_version, new_version, new_version) == (
        rotated["old_version"],
        rotated["new_version"],
        signed["key_version"],
    )
    assert expected_signature(ROTATED_KEY, signed["timestamp"], "085") == signed["signature"]


def test_rotation_is_picked_up_on_an_admin_refresh(
    daemon: Daemon, moto_endpoint: MotoEndpoint, secret: tuple[str, str]
) -> None:
    """PutSecretValue then POST /v1/refresh rotates; the next signature uses the new key."""
    new_version = rotate(moto_endpoint, secret[0])
    daemon.client().refresh("sandbox")
    signed = daemon.client().sign("sandbox")
    assert (new_version, expected_signature(ROTATED_KEY, signed["timestamp"], "085")) == (
        signed["key_version"],
        signed["signature"],
    )


def test_scheduled_check_picks_up_a_rotation(
    start_daemon, moto_endpoint: MotoEndpoint, secret: tuple[str, str]
) -> None:
    """With a short interval the cheap scheduled check finds the new version by itself."""
    daemon = start(start_daemon, moto_endpoint, secret[0], "1s")
    new_version = rotate(moto_endpoint, secret[0])
    rotated = daemon.wait_for_event("key.rotated", environment="sandbox", trigger="schedule")
    daemon.assert_no_secret_in_logs((FIRST_KEY, ROTATED_KEY))
    assert new_version == rotated["new_version"]


def test_deleted_secret_keeps_the_last_good_key(
    daemon: Daemon, moto_endpoint: MotoEndpoint, secret: tuple[str, str]
) -> None:
    """A secret marked for deletion is reported; signing goes on with the held key."""
    name, version = secret
    moto_endpoint.client().delete_secret(SecretId=name)
    daemon.signal(signal.SIGHUP)
    failure = daemon.wait_for_event("key.refresh_failed", environment="sandbox")
    signed = daemon.client().sign("sandbox")
    assert ("secret_deleted", version, version) == (
        failure["error_code"],
        failure["serving_version"],
        signed["key_version"],
    )


def test_a_version_id_set_to_the_key_is_refused_and_the_last_good_key_kept(
    daemon: Daemon, moto_endpoint: MotoEndpoint, secret: tuple[str, str]
) -> None:
    """PutSecretValue with ClientRequestToken = the new key (its VersionId): the read is
    refused as key_version_invalid, signing goes on with the held version, and the new key
    appears in no answer (sign, refresh, status) nor in the log (the fixture checks)."""
    name, version = secret
    moto_endpoint.client().put_secret_value(
        SecretId=name, SecretString=payload(ROTATED_KEY), ClientRequestToken=ROTATED_KEY
    )
    client = daemon.client()
    refreshed = client.refresh("sandbox")
    failure = daemon.wait_for_event("key.refresh_failed", environment="sandbox")
    signed = client.sign("sandbox")
    answers = json.dumps([refreshed, signed, client.status()])

    assert ("key_version_invalid", version, version) == (
        failure["error_code"],
        failure["serving_version"],
        signed["key_version"],
    )
    assert expected_signature(FIRST_KEY, signed["timestamp"], "085") == signed["signature"]
    assert ROTATED_KEY not in answers
