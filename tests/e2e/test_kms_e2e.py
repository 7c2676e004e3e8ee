"""The daemon with a KMS signer against a real moto server: HMAC_256 keys behind an alias.

moto cannot import key material (``GetParametersForImport`` and ``ImportKeyMaterial`` answer
500), so no key here is known: each signature the daemon answers is checked against KMS itself
(``GenerateMac`` of the same message, byte for byte, and ``VerifyMac``). The import procedure
for real KMS is in docs/sources/aws.md.
"""

from __future__ import annotations

import base64
import signal
import time
from collections.abc import Callable
from typing import Any

import boto3
import pytest

from support.daemon import Daemon
from support.moto_server import MotoEndpoint

pytestmark = pytest.mark.aws

CONFIG = """
[server]
socket = "{{socket}}"

[refresh]
interval = "1h"

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
signer = "kms"
kms_key = "{alias}"
partner_id = "085"
presign_lead = "30s"
presign_refill_below = "15s"
presign_batch = 30
"""


def kms(moto_endpoint: MotoEndpoint) -> Any:
    return boto3.client("kms", region_name=moto_endpoint.region, endpoint_url=moto_endpoint.url)


def hmac_key(client: Any) -> str:
    """A new HMAC_256 key in moto (its material moto's own); returns its KeyId."""
    created = client.create_key(KeySpec="HMAC_256", KeyUsage="GENERATE_VERIFY_MAC")
    return str(created["KeyMetadata"]["KeyId"])


def kms_mac(client: Any, key_id: str, timestamp: str) -> str:
    """KMS's own HMAC of what the daemon signs: ``timestamp + partner_id + "sid_request"``."""
    message = (timestamp + "085sid_request").encode()
    answer = client.generate_mac(KeyId=key_id, Message=message, MacAlgorithm="HMAC_SHA_256")
    return base64.b64encode(answer["Mac"]).decode()


def kms_verifies(client: Any, key_id: str, timestamp: str, signature: str) -> bool:
    message = (timestamp + "085sid_request").encode()
    answer = client.verify_mac(
        KeyId=key_id,
        Message=message,
        MacAlgorithm="HMAC_SHA_256",
        Mac=base64.b64decode(signature),
    )
    return bool(answer["MacValid"])


def caller_timestamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.123Z", time.gmtime())


def start(start_daemon: Callable[..., Daemon], endpoint: str, alias: str) -> Daemon:
    daemon = start_daemon(CONFIG.format(endpoint=endpoint, alias=alias))
    daemon.wait_for_event("presign.refilled", environment="sandbox")
    return daemon


def test_kms_signatures_are_kms_macs_and_a_burst_makes_no_call(
    moto_endpoint: MotoEndpoint, start_daemon: Callable[..., Daemon]
) -> None:
    """Presigned and live signatures equal GenerateMac's and pass VerifyMac; the daemon's verify
    agrees; 1000 default-timestamp signatures make no GenerateMac (the live one makes one)."""
    client = kms(moto_endpoint)
    key_id = hmac_key(client)
    alias = f"alias/{moto_endpoint.secret_name('kms')}"
    client.create_alias(AliasName=alias, TargetKeyId=key_id)
    with moto_endpoint.outage_front() as front:
        daemon = start(start_daemon, front.url, alias)
        sidkeyd = daemon.client()
        before_burst = front.count("GenerateMac")
        burst = [sidkeyd.sign("sandbox") for _ in range(1000)]
        after_burst = front.count("GenerateMac")
        stamp = caller_timestamp()
        live = sidkeyd.sign("sandbox", stamp)
        after_live = front.count("GenerateMac")
        verified = [
            sidkeyd.verify("sandbox", burst[-1]["timestamp"], burst[-1]["signature"])["valid"],
            sidkeyd.verify("sandbox", stamp, live["signature"])["valid"],
            sidkeyd.verify("sandbox", stamp, burst[-1]["signature"])["valid"],
        ]
    presigned = burst[-1]

    assert 30 == before_burst  # presign_lead 30s: one GenerateMac per whole second
    assert (0, 1) == (after_burst - before_burst, after_live - after_burst)
    assert presigned["timestamp"].endswith(".000Z")
    assert (key_id, key_id) == (presigned["key_version"], live["key_version"])
    assert kms_mac(client, key_id, presigned["timestamp"]) == presigned["signature"]
    assert kms_mac(client, key_id, stamp) == live["signature"]
    assert kms_verifies(client, key_id, stamp, live["signature"])
    assert [True, True, False] == verified


def test_an_alias_switch_is_a_rotation_and_the_old_table_is_dropped(
    moto_endpoint: MotoEndpoint, start_daemon: Callable[..., Daemon]
) -> None:
    """The cheap check (DescribeKey on the alias) sees the new KeyId; the next default-timestamp
    signature is the new key's MAC, never one presigned with the old key."""
    client = kms(moto_endpoint)
    old_key, new_key = hmac_key(client), hmac_key(client)
    alias = f"alias/{moto_endpoint.secret_name('kms')}"
    client.create_alias(AliasName=alias, TargetKeyId=old_key)
    daemon = start(start_daemon, moto_endpoint.url, alias)
    before = daemon.client().sign("sandbox")
    client.update_alias(AliasName=alias, TargetKeyId=new_key)
    daemon.signal(signal.SIGHUP)
    rotated = daemon.wait_for_event("key.rotated", environment="sandbox")
    after = daemon.client().sign("sandbox")

    assert old_key == before["key_version"]
    assert (old_key, new_key) == (rotated["old_version"], rotated["new_version"])
    assert new_key == after["key_version"]
    assert kms_mac(client, new_key, after["timestamp"]) == after["signature"]
    assert kms_mac(client, old_key, after["timestamp"]) != after["signature"]
