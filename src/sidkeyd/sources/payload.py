"""Turn a secret's payload into a key and an optional partner id. Pure; messages never quote it."""

from __future__ import annotations

import json
from collections.abc import Mapping

from sidkeyd.config import EnvironmentConfig
from sidkeyd.errors import InvalidSecretError
from sidkeyd.keystore import ApiKey


def key_from_text(text: str, environment: EnvironmentConfig) -> tuple[ApiKey, str | None]:
    """A JSON object with the key fields, or (payload "plain"/"auto") the key itself."""
    stripped = text.strip()
    wants_json = environment.payload == "json" or (
        environment.payload == "auto" and stripped.startswith(("{", "[", '"'))
    )
    if wants_json:
        try:
            data = json.loads(stripped)
        except ValueError:
            raise InvalidSecretError(
                "secret payload is not valid JSON", code="malformed_payload"
            ) from None
        if not isinstance(data, dict):
            raise InvalidSecretError(
                "secret payload must be a JSON object", code="malformed_payload"
            )
        return key_from_mapping(data, environment)
    if not stripped or any(ch.isspace() for ch in stripped):
        raise InvalidSecretError(
            "plain secret payload must be one non-empty token (the key itself)",
            code="malformed_payload",
        )
    return ApiKey(stripped), None


def key_from_mapping(
    data: Mapping[str, object], environment: EnvironmentConfig
) -> tuple[ApiKey, str | None]:
    """Read the configured key and partner id fields out of a decoded secret."""
    key_field, partner_field = environment.api_key_field, environment.partner_id_field
    api_key = data.get(key_field)
    if not isinstance(api_key, str) or not api_key.strip():
        raise InvalidSecretError(
            f"secret has no non-empty string field {key_field!r}", code="malformed_payload"
        )
    partner_id = data.get(partner_field)
    if partner_id is not None and (not isinstance(partner_id, str) or not partner_id.strip()):
        raise InvalidSecretError(
            f'secret field {partner_field!r} must be a non-empty string ("085", not 85)',
            code="malformed_payload",
        )
    return ApiKey(api_key.strip()), partner_id
