"""Config of remote signers: each signer on its own kind of source, presign limits with units."""

from __future__ import annotations

import tomllib
from datetime import timedelta
from pathlib import Path

import pytest

from sidkeyd.config import EnvironmentConfig
from sidkeyd.config_loader import parse_config
from sidkeyd.errors import ConfigError

SOURCES = """
[sources.local]
type = "file"
path = "keys.toml"

[sources.bao]
type = "vault"
url = "http://127.0.0.1:8200"

[sources.aws]
type = "aws"
region = "eu-west-1"
"""

TRANSIT = (
    SOURCES
    + """
[environments.sandbox]
source = "bao"
signer = "transit"
transit_key = "smileid-sandbox"
partner_id = "085"
"""
)

LOCAL = (
    SOURCES
    + """
[environments.sandbox]
source = "local"
secret = "smileid/sandbox"
partner_id = "085"
"""
)


KMS = (
    SOURCES
    + """
[environments.sandbox]
source = "aws"
signer = "kms"
kms_key = "alias/smileid-sandbox"
partner_id = "085"
"""
)


def environment(text: str) -> EnvironmentConfig:
    return parse_config(tomllib.loads(text), base_dir=Path("/etc/sidkeyd")).environments["sandbox"]


def problems(text: str) -> dict[str, str]:
    with pytest.raises(ConfigError) as caught:
        environment(text)
    return {p.key: p.reason for p in caught.value.problems}


def test_the_signer_defaults_to_the_local_key() -> None:
    """Without ``signer``, an environment signs with the key it reads, as before."""
    env = environment(LOCAL)
    assert ("local", False) == (env.signer, env.remote)


def test_a_transit_signer_gets_the_documented_defaults() -> None:
    """Mount "transit"; presigned 10 minutes ahead, refilled below 5, 300 per batch; no secret."""
    env = environment(TRANSIT)
    assert ("transit", True, "transit", "smileid-sandbox", "") == (
        env.signer,
        env.remote,
        env.transit_mount,
        env.transit_key,
        env.secret,
    )
    assert (timedelta(minutes=10), timedelta(minutes=5), 300) == (
        env.presign.lead,
        env.presign.refill_below,
        env.presign.batch,
    )


def test_presign_settings_take_durations_with_units() -> None:
    """Lead, refill threshold and batch size are read as given."""
    env = environment(
        TRANSIT
        + 'transit_mount = "/kv-transit/"\npresign_lead = "1h"\n'
        + 'presign_refill_below = "20m"\npresign_batch = 400\n'
    )
    assert ("kv-transit", timedelta(hours=1), timedelta(minutes=20), 400) == (
        env.transit_mount,
        env.presign.lead,
        env.presign.refill_below,
        env.presign.batch,
    )


def test_invalid_presign_settings_are_named_with_their_paths() -> None:
    """A duration without a unit and a batch past Transit's limit are problems at their keys."""
    found = problems(TRANSIT + 'presign_lead = "600"\npresign_batch = 1000\n')
    assert {"environments.sandbox.presign_lead", "environments.sandbox.presign_batch"} <= set(found)
    assert "450" in found["environments.sandbox.presign_batch"]


def test_live_calls_max_defaults_to_16() -> None:
    """At most 16 live calls outstanding per environment unless configured."""
    assert 16 == environment(TRANSIT).presign.live_calls_max


def test_live_calls_max_is_read_as_given() -> None:
    """A valid bound is kept."""
    assert 64 == environment(TRANSIT + "live_calls_max = 64\n").presign.live_calls_max


def test_an_invalid_live_calls_max_is_named_with_its_path() -> None:
    """Zero would refuse every live call: a problem at its key, with the range."""
    found = problems(TRANSIT + "live_calls_max = 0\n")
    assert "must be between 1 and 1024, not 0" == found["environments.sandbox.live_calls_max"]


def test_live_calls_max_needs_a_remote_signer() -> None:
    """A local key makes no live call: the setting is a slip."""
    found = problems(LOCAL + "live_calls_max = 4\n")
    assert "needs a remote signer" in found["environments.sandbox.live_calls_max"]


def test_the_refill_threshold_must_be_below_the_lead() -> None:
    """Refilling when less than the whole lead is left would refill forever."""
    found = problems(TRANSIT + 'presign_lead = "1m"\npresign_refill_below = "1m"\n')
    assert "must be shorter than presign_lead" == found["environments.sandbox.presign_refill_below"]


def test_a_transit_signer_on_a_file_source_is_refused() -> None:
    """Transit is Vault's: ``signer = "transit"`` on a file source names the signer key."""
    found = problems(TRANSIT.replace('source = "bao"', 'source = "local"'))
    assert (
        "a transit signer needs a vault source, not 'file'"
        == (found["environments.sandbox.signer"])
    )


def test_a_transit_signer_needs_its_key_and_partner_id() -> None:
    """No key name and no partner id (no secret carries it): both named."""
    found = problems(
        TRANSIT.replace('transit_key = "smileid-sandbox"\n', "").replace('partner_id = "085"\n', "")
    )
    assert "required with signer = 'transit'" == found["environments.sandbox.transit_key"]
    assert "no secret carries it" in found["environments.sandbox.partner_id"]


def test_a_transit_signer_refuses_what_only_a_read_key_uses() -> None:
    """A secret, a payload format or a V3 token (which needs the key itself) are problems."""
    found = problems(TRANSIT + 'secret = "smileid/sandbox"\nsmileid = "sandbox"\n')
    reason = "a transit signer reads no secret: the key stays in transit"
    assert (reason, reason) == (
        found["environments.sandbox.secret"],
        found["environments.sandbox.smileid"],
    )


def test_transit_keys_on_a_local_signer_are_refused() -> None:
    """``transit_key`` or a presign setting without a remote signer is a slip, not ignored."""
    found = problems(LOCAL + 'transit_key = "k"\npresign_batch = 10\n')
    assert "needs signer = 'transit'" == found["environments.sandbox.transit_key"]
    assert "needs a remote signer" in found["environments.sandbox.presign_batch"]


def test_an_unknown_signer_is_named() -> None:
    """Only the signers sidkeyd has are accepted."""
    found = problems(LOCAL + 'signer = "hsm"\n')
    assert "must be one of local, transit, kms, not 'hsm'" == found["environments.sandbox.signer"]


def test_a_kms_signer_takes_its_key_and_the_presign_defaults() -> None:
    """``kms_key`` as given (an alias here); no secret; the same presign defaults."""
    env = environment(KMS)
    assert ("kms", "alias/smileid-sandbox", "", 300) == (
        env.signer,
        env.kms_key,
        env.secret,
        env.presign.batch,
    )


def test_a_kms_signer_on_a_vault_environment_is_refused() -> None:
    """KMS is AWS's: ``signer = "kms"`` on a vault source is named at the signer key."""
    found = problems(KMS.replace('source = "aws"', 'source = "bao"'))
    assert "a kms signer needs an aws source, not 'vault'" == found["environments.sandbox.signer"]


def test_a_kms_signer_needs_its_key() -> None:
    """No ``kms_key``: named."""
    found = problems(KMS.replace('kms_key = "alias/smileid-sandbox"\n', ""))
    assert "required with signer = 'kms'" == found["environments.sandbox.kms_key"]


def test_one_signers_keys_on_another_signer_are_refused() -> None:
    """``transit_key`` with KMS and ``kms_key`` with Transit: each names the signer it needs."""
    on_kms = problems(KMS + 'transit_key = "k"\n')
    on_transit = problems(TRANSIT + 'kms_key = "alias/k"\n')
    assert "needs signer = 'transit'" == on_kms["environments.sandbox.transit_key"]
    assert "needs signer = 'kms'" == on_transit["environments.sandbox.kms_key"]
