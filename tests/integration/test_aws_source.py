"""The AWS source against a real moto server: loads, cheap checks, rotations, failures, regions."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from sidkeyd.config import EnvironmentConfig
from sidkeyd.errors import (
    AccessLostError,
    InvalidSecretError,
    PermanentSourceError,
    TransientSourceError,
)
from sidkeyd.keystore import KeyStore
from sidkeyd.rotation import KeyManager, Trigger
from sidkeyd.sources import SecretValue, Unchanged
from sidkeyd.sources.aws import AwsSource
from support.engine import make_manager
from support.logs import captured_events
from support.moto_server import MotoEndpoint, closed_port_url, source_config
from support.tls import tls_hangup_url

pytestmark = pytest.mark.aws

PRIMARY = "us-east-1"
REPLICA = "eu-west-1"
KEY_ONE = "aws-it-key-one-3b9f-not-real"
KEY_TWO = "aws-it-key-two-8c1e-not-real"
WAIT_S = 15.0  # upper bound on a wait; never a sleep


@contextmanager
def opened(endpoint_url: str | None, **overrides: Any) -> Iterator[AwsSource]:
    """An AwsSource on ``source_config(endpoint_url, **overrides)``, closed on the way out."""
    aws = AwsSource(source_config(endpoint_url, **overrides))
    try:
        yield aws
    finally:
        aws.close()


def env_config(secret: str, **overrides: Any) -> EnvironmentConfig:
    return EnvironmentConfig(name="sandbox", source="aws", secret=secret, **overrides)


def json_payload(api_key: str, partner_id: str | None = "085") -> str:
    data = {"api_key": api_key}
    if partner_id is not None:
        data["partner_id"] = partner_id
    return json.dumps(data)


@pytest.fixture
def source(moto_endpoint: MotoEndpoint) -> Iterator[AwsSource]:
    aws = AwsSource(source_config(moto_endpoint.url))
    yield aws
    aws.close()


@pytest.fixture
def secret(moto_endpoint: MotoEndpoint) -> tuple[str, str]:
    """A JSON secret holding KEY_ONE: (name, VersionId)."""
    name = moto_endpoint.secret_name()
    created = moto_endpoint.client().create_secret(Name=name, SecretString=json_payload(KEY_ONE))
    return name, created["VersionId"]


def rotate(moto_endpoint: MotoEndpoint, name: str, api_key: str) -> str:
    """Put a new AWSCURRENT version; returns its VersionId."""
    put = moto_endpoint.client().put_secret_value(SecretId=name, SecretString=json_payload(api_key))
    return put["VersionId"]


def count_calls(aws: AwsSource, operation: str, region: str = PRIMARY) -> list[str]:
    """Append the operation's name each time the source's client is about to call it."""
    calls: list[str] = []
    aws.client(region).meta.events.register(
        f"before-call.secrets-manager.{operation}", lambda **_: calls.append(operation)
    )
    return calls


def fetch_value(aws: AwsSource, environment: EnvironmentConfig) -> SecretValue:
    result = aws.fetch(environment, None)
    assert isinstance(result, SecretValue)
    return result


# -- loads -------------------------------------------------------------------------------


def test_first_load_reads_a_json_secret(source: AwsSource, secret: tuple[str, str]) -> None:
    """A JSON secret gives its api_key, its partner_id and the VersionId, served by the region."""
    name, version = secret
    value = fetch_value(source, env_config(name))
    assert (KEY_ONE, "085", version, PRIMARY) == (
        value.api_key.reveal(),
        value.partner_id,
        value.version,
        value.served_by,
    )


def test_first_load_reads_a_plain_string_secret(
    source: AwsSource, moto_endpoint: MotoEndpoint
) -> None:
    """A plain string secret is the key itself, with no partner id."""
    name = moto_endpoint.secret_name()
    moto_endpoint.client().create_secret(Name=name, SecretString=KEY_ONE)
    value = fetch_value(source, env_config(name, payload="plain", partner_id="085"))
    assert (KEY_ONE, None) == (value.api_key.reveal(), value.partner_id)


def test_configured_field_names_are_read(source: AwsSource, moto_endpoint: MotoEndpoint) -> None:
    """api_key_field and partner_id_field name the JSON fields to read."""
    name = moto_endpoint.secret_name()
    payload = json.dumps({"smile_key": KEY_ONE, "smile_partner": "2301"})
    moto_endpoint.client().create_secret(Name=name, SecretString=payload)
    environment = env_config(name, api_key_field="smile_key", partner_id_field="smile_partner")
    value = fetch_value(source, environment)
    assert (KEY_ONE, "2301") == (value.api_key.reveal(), value.partner_id)


def test_secret_binary_is_read_as_utf8(source: AwsSource, moto_endpoint: MotoEndpoint) -> None:
    """A SecretBinary holding UTF-8 text is parsed like a SecretString."""
    name = moto_endpoint.secret_name()
    moto_endpoint.client().create_secret(Name=name, SecretBinary=json_payload(KEY_ONE).encode())
    assert KEY_ONE == fetch_value(source, env_config(name)).api_key.reveal()


def test_secret_binary_that_is_not_utf8_is_rejected(
    source: AwsSource, moto_endpoint: MotoEndpoint
) -> None:
    """A SecretBinary that is not UTF-8 raises InvalidSecretError binary_not_utf8."""
    name = moto_endpoint.secret_name()
    moto_endpoint.client().create_secret(Name=name, SecretBinary=b"\xff\xfe\x00key")
    with pytest.raises(InvalidSecretError) as caught:
        source.fetch(env_config(name), None)
    assert "binary_not_utf8" == caught.value.code


def test_malformed_payload_is_an_invalid_secret(
    source: AwsSource, moto_endpoint: MotoEndpoint
) -> None:
    """A JSON payload without api_key raises InvalidSecretError; the message quotes no payload."""
    name = moto_endpoint.secret_name()
    payload = json.dumps({"apikey": KEY_ONE})
    moto_endpoint.client().create_secret(Name=name, SecretString=payload)
    with pytest.raises(InvalidSecretError) as caught:
        source.fetch(env_config(name), None)
    assert ("malformed_payload", False) == (caught.value.code, KEY_ONE in str(caught.value))


# -- cheap checks and rotations ------------------------------------------------------------


def test_check_at_the_held_version_is_unchanged(source: AwsSource, secret: tuple[str, str]) -> None:
    """With the current version held, the check returns Unchanged for it, served by the region."""
    name, version = secret
    assert Unchanged(version, served_by=PRIMARY) == source.fetch(env_config(name), version)


def test_check_at_the_held_version_does_not_read_the_secret(
    source: AwsSource, secret: tuple[str, str]
) -> None:
    """An unchanged check is one DescribeSecret and no GetSecretValue."""
    name, version = secret
    reads = count_calls(source, "GetSecretValue")
    describes = count_calls(source, "DescribeSecret")
    source.fetch(env_config(name), version)
    assert ([], ["DescribeSecret"]) == (reads, describes)


def test_forced_check_reads_the_secret(source: AwsSource, secret: tuple[str, str]) -> None:
    """With no version held (first load, forced check) GetSecretValue runs, DescribeSecret not."""
    name, _ = secret
    reads = count_calls(source, "GetSecretValue")
    describes = count_calls(source, "DescribeSecret")
    source.fetch(env_config(name), None)
    assert (["GetSecretValue"], []) == (reads, describes)


def test_rotation_is_picked_up_on_the_next_check(
    source: AwsSource, moto_endpoint: MotoEndpoint, secret: tuple[str, str]
) -> None:
    """After PutSecretValue the next check returns the new key and its new VersionId."""
    name, old_version = secret
    new_version = rotate(moto_endpoint, name, KEY_TWO)
    value = source.fetch(env_config(name), old_version)
    assert isinstance(value, SecretValue)
    assert (KEY_TWO, new_version) == (value.api_key.reveal(), value.version)


def test_awsprevious_stage_is_selectable(
    source: AwsSource, moto_endpoint: MotoEndpoint, secret: tuple[str, str]
) -> None:
    """version_stage = AWSPREVIOUS reads the version before the last rotation."""
    name, old_version = secret
    rotate(moto_endpoint, name, KEY_TWO)
    value = fetch_value(source, env_config(name, version_stage="AWSPREVIOUS"))
    assert (KEY_ONE, old_version) == (value.api_key.reveal(), value.version)


def test_check_of_a_missing_stage_is_access_lost(
    source: AwsSource, secret: tuple[str, str]
) -> None:
    """A check for a stage no version carries raises AccessLostError version_stage_not_found."""
    name, version = secret
    with pytest.raises(AccessLostError) as caught:
        source.fetch(env_config(name, version_stage="AWSPREVIOUS"), version)
    assert "version_stage_not_found" == caught.value.code


# -- failures ------------------------------------------------------------------------------


def test_secret_marked_for_deletion_is_access_lost_on_load(
    source: AwsSource, moto_endpoint: MotoEndpoint, secret: tuple[str, str]
) -> None:
    """Reading a secret marked for deletion raises AccessLostError secret_deleted."""
    name, _ = secret
    moto_endpoint.client().delete_secret(SecretId=name)
    with pytest.raises(AccessLostError) as caught:
        source.fetch(env_config(name), None)
    assert "secret_deleted" == caught.value.code


def test_secret_marked_for_deletion_is_access_lost_on_check(
    source: AwsSource, moto_endpoint: MotoEndpoint, secret: tuple[str, str]
) -> None:
    """A cheap check of a secret marked for deletion raises AccessLostError secret_deleted."""
    name, version = secret
    moto_endpoint.client().delete_secret(SecretId=name)
    with pytest.raises(AccessLostError) as caught:
        source.fetch(env_config(name), version)
    assert "secret_deleted" == caught.value.code


def test_secret_deleted_for_good_is_not_found(
    source: AwsSource, moto_endpoint: MotoEndpoint, secret: tuple[str, str]
) -> None:
    """A secret deleted without recovery raises AccessLostError secret_not_found."""
    name, version = secret
    moto_endpoint.client().delete_secret(SecretId=name, ForceDeleteWithoutRecovery=True)
    with pytest.raises(AccessLostError) as caught:
        source.fetch(env_config(name), version)
    assert "secret_not_found" == caught.value.code


def test_unreachable_endpoint_is_transient() -> None:
    """Nothing listening at endpoint_url raises TransientSourceError endpoint_unreachable."""
    with opened(closed_port_url()) as aws, pytest.raises(TransientSourceError) as caught:
        aws.fetch(env_config("smileid/sandbox"), None)
    assert ("endpoint_unreachable", True) == (
        caught.value.code,
        caught.value.reason.startswith(f"{PRIMARY}: "),
    )


def test_tls_handshake_cut_short_is_transient_and_falls_back(moto_endpoint: MotoEndpoint) -> None:
    """A TLS handshake ended by the server is transient (not tls_error): fallbacks are tried.

    (``moto_endpoint`` for its fake credentials only.)
    """
    with (
        tls_hangup_url() as url,
        opened(url, fallback_regions=[REPLICA]) as aws,
        pytest.raises(TransientSourceError) as caught,
    ):
        aws.fetch(env_config("smileid/sandbox"), None)
    assert ("tls_connection_error", True) == (
        caught.value.code,
        f"fallback {REPLICA}: " in caught.value.reason,
    )


def test_missing_credentials_are_permanent(
    monkeypatch: pytest.MonkeyPatch, moto_endpoint: MotoEndpoint
) -> None:
    """With no credentials in the standard chain the source raises no_credentials."""
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with opened(moto_endpoint.url) as aws, pytest.raises(PermanentSourceError) as caught:
        aws.fetch(env_config("smileid/sandbox"), None)
    assert "no_credentials" == caught.value.code


def test_credentials_that_appear_later_are_used(
    monkeypatch: pytest.MonkeyPatch, moto_endpoint: MotoEndpoint, secret: tuple[str, str]
) -> None:
    """A check after a no_credentials failure looks at the chain again and succeeds."""
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    with opened(moto_endpoint.url) as aws:
        with pytest.raises(PermanentSourceError):
            aws.fetch(env_config(secret[0]), None)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        value = fetch_value(aws, env_config(secret[0]))
    assert KEY_ONE == value.api_key.reveal()


def test_closed_source_refuses_to_fetch(source: AwsSource, secret: tuple[str, str]) -> None:
    """After close() a fetch raises source_closed instead of building new clients."""
    source.close()
    with pytest.raises(PermanentSourceError) as caught:
        source.fetch(env_config(secret[0]), None)
    assert "source_closed" == caught.value.code


# -- clients, endpoints, roles ---------------------------------------------------------------


def test_clients_are_built_once_per_region(source: AwsSource) -> None:
    """The same client object serves every call to a region."""
    assert source.client(PRIMARY) is source.client(PRIMARY)


def test_endpoint_url_region_placeholder_is_filled_per_region() -> None:
    """An endpoint_url with {region} gives each region's client its own endpoint."""
    with opened("https://secretsmanager-fips.{region}.amazonaws.com") as aws:
        endpoints = [aws.client(region).meta.endpoint_url for region in (PRIMARY, REPLICA)]
    assert [
        "https://secretsmanager-fips.us-east-1.amazonaws.com",
        "https://secretsmanager-fips.eu-west-1.amazonaws.com",
    ] == endpoints


def test_role_is_assumed_when_configured(
    monkeypatch: pytest.MonkeyPatch, moto_endpoint: MotoEndpoint, secret: tuple[str, str]
) -> None:
    """With role_arn set the secret is read with credentials from STS AssumeRole."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", moto_endpoint.url)
    role = "arn:aws:iam::123456789012:role/sidkeyd-reader"
    with opened(moto_endpoint.url, role_arn=role, external_id="ext-1") as aws:
        value = fetch_value(aws, env_config(secret[0]))
        assert aws.session is not None
        credentials = aws.session.get_credentials()
        assert credentials is not None
        used = (credentials.method, credentials.get_frozen_credentials().access_key)
    assert (KEY_ONE, "assume-role", False) == (
        value.api_key.reveal(),
        used[0],
        used[1] == "testing",
    )


def test_unreachable_sts_fails_the_fetch(
    monkeypatch: pytest.MonkeyPatch, moto_endpoint: MotoEndpoint, secret: tuple[str, str]
) -> None:
    """When STS cannot be reached to assume the role, the fetch fails as a SourceError."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", closed_port_url())
    role = "arn:aws:iam::123456789012:role/sidkeyd-reader"
    with (
        opened(moto_endpoint.url, role_arn=role) as aws,
        pytest.raises(TransientSourceError) as caught,
    ):
        aws.fetch(env_config(secret[0]), None)
    assert "endpoint_unreachable" == caught.value.code


# -- fallback regions ------------------------------------------------------------------------


@pytest.fixture
def replicated(moto_endpoint: MotoEndpoint) -> tuple[str, str]:
    """A secret in the primary region replicated to REPLICA: (name, VersionId)."""
    name = moto_endpoint.secret_name()
    created = moto_endpoint.client().create_secret(
        Name=name, SecretString=json_payload(KEY_ONE), AddReplicaRegions=[{"Region": REPLICA}]
    )
    return name, created["VersionId"]


def test_fallback_region_serves_when_the_primary_is_down(
    moto_endpoint: MotoEndpoint, replicated: tuple[str, str]
) -> None:
    """With the primary region down, the replica's key is read and served_by names it."""
    name, version = replicated
    with (
        moto_endpoint.outage_front(down={PRIMARY}) as front,
        opened(front.url, fallback_regions=(REPLICA,)) as aws,
    ):
        value = fetch_value(aws, env_config(name))
    assert (KEY_ONE, version, REPLICA) == (value.api_key.reveal(), value.version, value.served_by)


def test_fallback_region_confirms_the_held_version(
    moto_endpoint: MotoEndpoint, replicated: tuple[str, str]
) -> None:
    """The replica's VersionId is the primary's, so a check from it returns Unchanged."""
    name, version = replicated
    with (
        moto_endpoint.outage_front(down={PRIMARY}) as front,
        opened(front.url, fallback_regions=(REPLICA,)) as aws,
    ):
        result = aws.fetch(env_config(name), version)
    assert Unchanged(version, served_by=REPLICA) == result


def test_primary_region_is_used_while_it_is_up(
    moto_endpoint: MotoEndpoint, replicated: tuple[str, str]
) -> None:
    """With every region up the primary serves and the fallback's client is never called."""
    name, _ = replicated
    with (
        moto_endpoint.outage_front() as front,
        opened(front.url, fallback_regions=(REPLICA,)) as aws,
    ):
        fallback_calls = count_calls(aws, "GetSecretValue", REPLICA)
        value = fetch_value(aws, env_config(name))
    assert (PRIMARY, []) == (value.served_by, fallback_calls)


def test_permanent_primary_error_does_not_fall_back(moto_endpoint: MotoEndpoint) -> None:
    """A secret missing in the primary is access lost, even if a fallback region has one."""
    name = moto_endpoint.secret_name()
    moto_endpoint.client(REPLICA).create_secret(Name=name, SecretString=json_payload(KEY_ONE))
    with (
        opened(moto_endpoint.url, fallback_regions=(REPLICA,)) as aws,
        pytest.raises(AccessLostError) as caught,
    ):
        aws.fetch(env_config(name), None)
    assert "secret_not_found" == caught.value.code


def test_every_region_down_is_transient(
    moto_endpoint: MotoEndpoint, replicated: tuple[str, str]
) -> None:
    """With all regions down the error is transient and its reason names each region."""
    name, _ = replicated
    with (
        moto_endpoint.outage_front(down={PRIMARY, REPLICA}) as front,
        opened(front.url, fallback_regions=(REPLICA,)) as aws,
        pytest.raises(TransientSourceError) as caught,
    ):
        aws.fetch(env_config(name), None)
    assert ("connection_closed", True, True) == (
        caught.value.code,
        f"{PRIMARY}: " in caught.value.reason,
        f"fallback {REPLICA}: " in caught.value.reason,
    )


def test_fallback_without_the_replica_stays_transient(
    moto_endpoint: MotoEndpoint, secret: tuple[str, str]
) -> None:
    """Primary down and the secret not replicated: transient, never access lost."""
    name, _ = secret
    with (
        moto_endpoint.outage_front(down={PRIMARY}) as front,
        opened(front.url, fallback_regions=(REPLICA,)) as aws,
        pytest.raises(TransientSourceError) as caught,
    ):
        aws.fetch(env_config(name), None)
    assert "connection_closed" == caught.value.code


# -- through the rotation engine -------------------------------------------------------------


def engine_for(aws: AwsSource, name: str) -> tuple[KeyManager, KeyStore]:
    """A KeyManager with one environment on ``aws`` and a real KeyStore, not started."""
    environment = env_config(name, partner_id="085")
    return make_manager({"aws": aws}, environment)


def failed_check_keeps_the_key(aws: AwsSource, name: str, break_it: Any) -> list[dict[str, Any]]:
    """Load, break the backend, force a check; returns the key.refresh_failed events."""
    manager, store = engine_for(aws, name)

    async def body() -> list[dict[str, Any]]:
        await manager.check("sandbox", Trigger.STARTUP)
        loaded = store.get("sandbox")
        assert loaded is not None
        break_it()
        with captured_events() as logs:
            await manager.check("sandbox", Trigger.ADMIN, force=True)
        held = store.get("sandbox")
        assert held is not None
        assert (loaded.version, loaded.fingerprint) == (held.version, held.fingerprint)
        await manager.stop()
        return [e for e in logs if e["event"] == "key.refresh_failed"]

    return asyncio.run(body())


def test_engine_keeps_the_key_when_the_secret_is_deleted(
    source: AwsSource, moto_endpoint: MotoEndpoint, secret: tuple[str, str]
) -> None:
    """A deleted secret logs key.refresh_failed secret_deleted and the held key stays."""
    name, _ = secret
    failures = failed_check_keeps_the_key(
        source, name, lambda: moto_endpoint.client().delete_secret(SecretId=name)
    )
    assert [("permanent", "secret_deleted")] == [
        (e["error_kind"], e["error_code"]) for e in failures
    ]


def test_engine_keeps_the_key_when_the_payload_turns_malformed(
    source: AwsSource, moto_endpoint: MotoEndpoint, secret: tuple[str, str]
) -> None:
    """A new version without api_key logs key.refresh_failed malformed_payload; the key stays."""
    name, _ = secret
    failures = failed_check_keeps_the_key(
        source,
        name,
        lambda: moto_endpoint.client().put_secret_value(SecretId=name, SecretString="{}"),
    )
    assert [("permanent", "malformed_payload")] == [
        (e["error_kind"], e["error_code"]) for e in failures
    ]


def test_engine_keeps_the_key_when_the_endpoint_is_unreachable(
    moto_endpoint: MotoEndpoint, secret: tuple[str, str]
) -> None:
    """An outage logs key.refresh_failed as transient and the held key stays."""
    name, _ = secret
    with moto_endpoint.outage_front() as front:
        aws = AwsSource(source_config(front.url))
        failures = failed_check_keeps_the_key(aws, name, lambda: front.down.add(PRIMARY))
    assert [("transient", "connection_closed")] == [
        (e["error_kind"], e["error_code"]) for e in failures
    ]
