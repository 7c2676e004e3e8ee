"""Reading a key and partner id out of a secret's payload."""

from __future__ import annotations

import pytest

from sidkeyd.config import EnvironmentConfig
from sidkeyd.errors import InvalidSecretError
from sidkeyd.sources.payload import key_from_mapping, key_from_text

ENV = EnvironmentConfig(name="sandbox", source="s", secret="x")


def test_json_object_with_partner_id() -> None:
    """A JSON object gives the key and the partner id."""
    key, partner_id = key_from_text('{"api_key": "k-1", "partner_id": "085"}', ENV)
    assert ("k-1", "085") == (key.reveal(), partner_id)


def test_plain_string_is_the_key() -> None:
    """payload auto: a non-JSON string is the key itself, surrounding whitespace dropped."""
    key, partner_id = key_from_text("  k-plain\n", ENV)
    assert ("k-plain", None) == (key.reveal(), partner_id)


def test_field_names_are_configurable() -> None:
    """api_key_field and partner_id_field pick other names."""
    env = EnvironmentConfig(
        name="e", source="s", secret="x", api_key_field="key", partner_id_field="pid"
    )
    key, partner_id = key_from_mapping({"key": "k", "pid": "1"}, env)
    assert ("k", "1") == (key.reveal(), partner_id)


@pytest.mark.parametrize(
    "payload",
    [
        '{"api_key": ',
        '["k"]',
        '{"apikey": "k"}',
        '{"api_key": ""}',
        '{"api_key": "k", "partner_id": 85}',
        "two words",
        "",
    ],
)
def test_malformed_payloads_are_refused_without_quoting_them(payload: str) -> None:
    """Each is an InvalidSecretError whose message does not contain the payload."""
    with pytest.raises(InvalidSecretError) as caught:
        key_from_text(payload, ENV)
    assert "malformed_payload" == caught.value.code
    if payload:
        assert payload not in str(caught.value)


def test_json_payload_required_when_configured() -> None:
    """payload = "json" refuses a plain string."""
    env = EnvironmentConfig(name="e", source="s", secret="x", payload="json")
    with pytest.raises(InvalidSecretError):
        key_from_text("k-plain", env)
