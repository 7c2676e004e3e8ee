"""The AWS source's KMS signer against a real moto server, below the daemon."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from sidkeyd.config import EnvironmentConfig
from sidkeyd.errors import AccessLostError, InvalidSecretError
from sidkeyd.signing import signed_message
from sidkeyd.sources import RemoteKey, Unchanged
from sidkeyd.sources.aws import AwsSource
from support.moto_server import MotoEndpoint, source_config

pytestmark = pytest.mark.aws

STAMP = "2026-12-01T08:12:13.000Z"


@pytest.fixture
def kms(moto_endpoint: MotoEndpoint) -> Any:
    return boto3.client("kms", region_name=moto_endpoint.region, endpoint_url=moto_endpoint.url)


@pytest.fixture
def source(moto_endpoint: MotoEndpoint) -> Iterator[AwsSource]:
    aws = AwsSource(source_config(moto_endpoint.url))
    yield aws
    aws.close()


def aliased(kms: Any, moto_endpoint: MotoEndpoint, **key_args: Any) -> tuple[str, str]:
    """A new key (HMAC_256 unless told) behind a new alias: (alias, key id)."""
    spec = {"KeySpec": "HMAC_256", "KeyUsage": "GENERATE_VERIFY_MAC", **key_args}
    key_id = str(kms.create_key(**spec)["KeyMetadata"]["KeyId"])
    alias = f"alias/{moto_endpoint.secret_name('kms')}"
    kms.create_alias(AliasName=alias, TargetKeyId=key_id)
    return alias, key_id


def environment(alias: str) -> EnvironmentConfig:
    return EnvironmentConfig("sandbox", "aws", "", "085", signer="kms", kms_key=alias)


def remote(result: object) -> RemoteKey:
    assert isinstance(result, RemoteKey)
    return result


def test_the_key_id_behind_the_alias_is_the_version_and_unchanged_while_held(
    source: AwsSource, kms: Any, moto_endpoint: MotoEndpoint
) -> None:
    """DescribeKey on the alias: its KeyId; held, the check answers ``Unchanged``."""
    alias, key_id = aliased(kms, moto_endpoint)
    first = remote(source.fetch(environment(alias), None))
    unchanged = source.fetch(environment(alias), key_id)

    assert (key_id, Unchanged(key_id, served_by="us-east-1")) == (first.version, unchanged)


def test_signatures_are_kms_macs_and_a_wrong_one_is_invalid(
    source: AwsSource, kms: Any, moto_endpoint: MotoEndpoint
) -> None:
    """A batch is one GenerateMac each, in order; VerifyMac's refusal reads as invalid."""
    alias, key_id = aliased(kms, moto_endpoint)
    signer = remote(source.fetch(environment(alias), None)).signer
    messages = [signed_message(STAMP, "085"), signed_message("2026-12-01T08:12:14.000Z", "085")]
    signatures = signer.sign(messages)
    expected = [
        base64.b64encode(
            kms.generate_mac(KeyId=key_id, Message=m, MacAlgorithm="HMAC_SHA_256")["Mac"]
        ).decode()
        for m in messages
    ]

    assert expected == signatures
    assert (True, False) == (
        signer.verify(messages[0], signatures[0]),
        signer.verify(messages[0], signatures[1]),
    )


def test_a_key_that_is_not_hmac_256_is_refused(
    source: AwsSource, kms: Any, moto_endpoint: MotoEndpoint
) -> None:
    """An encryption key cannot compute Smile ID's HMAC: ``kms_key_type``."""
    alias, _ = aliased(kms, moto_endpoint, KeySpec="SYMMETRIC_DEFAULT", KeyUsage="ENCRYPT_DECRYPT")
    with pytest.raises(InvalidSecretError) as refused:
        source.fetch(environment(alias), None)

    assert "kms_key_type" == refused.value.code


def test_a_disabled_key_and_a_missing_alias_are_access_lost(
    source: AwsSource, kms: Any, moto_endpoint: MotoEndpoint
) -> None:
    """Disabled: ``key_disabled``; no such alias: ``key_not_found``; both cut the host off."""
    alias, key_id = aliased(kms, moto_endpoint)
    kms.disable_key(KeyId=key_id)
    with pytest.raises(AccessLostError) as disabled:
        source.fetch(environment(alias), None)
    with pytest.raises(AccessLostError) as missing:
        source.fetch(environment("alias/nothing-here"), None)

    assert ("key_disabled", "key_not_found") == (disabled.value.code, missing.value.code)


def test_a_malformed_signature_is_invalid_without_a_call(
    source: AwsSource, kms: Any, moto_endpoint: MotoEndpoint
) -> None:
    """Not 32 bytes of base64: refused locally (VerifyMac would refuse the length anyway)."""
    alias, _ = aliased(kms, moto_endpoint)
    with moto_endpoint.outage_front() as front:
        fronted = AwsSource(source_config(front.url))
        try:
            signer = remote(fronted.fetch(environment(alias), None)).signer
            answers = [signer.verify(b"m", "not base64!"), signer.verify(b"m", "c2hvcnQ=")]
        finally:
            fronted.close()

    assert ([False, False], 0) == (answers, front.count("VerifyMac"))
