"""Request bodies to fields: null optional fields are absent, every other refusal precise."""

from __future__ import annotations

import pytest

from sidkeyd.errors import BadRequest
from sidkeyd.validation import parse_fields


def test_a_null_optional_field_is_absent() -> None:
    """``"timestamp": null`` (Jackson, json_encode, to_json) reads as no timestamp."""
    fields = parse_fields(
        b'{"environment": "sandbox", "timestamp": null}',
        required=("environment",),
        optional=("timestamp",),
    )
    assert {"environment": "sandbox"} == fields


def test_a_null_optional_field_alone_is_no_fields() -> None:
    """refresh's ``{"environment": null}`` is a refresh of every environment."""
    fields = parse_fields(
        b'{"environment": null}', required=(), optional=("environment",), allow_empty=True
    )
    assert {} == fields


def test_a_null_required_field_is_a_precise_400() -> None:
    """A required field sent as null is refused, naming the field."""
    with pytest.raises(BadRequest) as refused:
        parse_fields(b'{"environment": null}', required=("environment",))
    assert ("invalid_request", "field 'environment' is required, not null") == (
        refused.value.code,
        refused.value.message,
    )


def test_a_null_unknown_field_is_still_unknown() -> None:
    """null does not make an unknown field acceptable."""
    with pytest.raises(BadRequest) as refused:
        parse_fields(b'{"environment": "sandbox", "extra": null}', required=("environment",))
    assert ("invalid_request", "unknown field 'extra'") == (
        refused.value.code,
        refused.value.message,
    )
