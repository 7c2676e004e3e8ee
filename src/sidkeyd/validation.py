"""Validating a request's JSON body: every refusal a precise 4xx, nothing quoted unbounded.

Pure: bytes in, a dict of strings out, or ``BadRequest`` carrying the response to send.
"""

from __future__ import annotations

import json

from sidkeyd.errors import BadRequest
from sidkeyd.log import untrusted

_DECODER = json.JSONDecoder()
MAX_SIGNATURE_CHARS = 128
MAX_TIMESTAMP_CHARS = 64


def _is_utf8_text(value: str) -> bool:
    """JSON's \\ud800 escapes decode to lone surrogates, which no UTF-8 encoder accepts."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_fields(
    raw: bytes,
    *,
    required: tuple[str, ...],
    optional: tuple[str, ...] = (),
    allow_empty: bool = False,
    allow_int: tuple[str, ...] = (),
) -> dict[str, str]:
    """The body's fields as strings; unknown, missing or non-string fields are BadRequest.

    An ``optional`` field that is ``null`` is absent: Jackson, PHP's ``json_encode`` and
    Ruby's ``to_json`` write unset fields so. A ``null`` required field is still refused.
    ``allow_int`` fields may also be JSON integers (made strings); ``allow_empty`` takes an
    empty body as no fields.
    """
    if not raw and allow_empty:
        return {}
    try:
        body = _DECODER.decode(raw.decode())
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the decoder
        raise BadRequest("invalid_json", "request body must be a JSON object") from None
    if not isinstance(body, dict):
        raise BadRequest("invalid_json", "request body must be a JSON object")
    for name in optional:
        if name in body and body[name] is None:
            del body[name]
    unknown = sorted(set(body) - set(required) - set(optional))
    if unknown:
        raise BadRequest("invalid_request", f"unknown field {untrusted(unknown[0], 64)!r}")
    for name in required:
        if name not in body:
            raise BadRequest("invalid_request", f"field {name!r} is required")
    for name, value in body.items():
        if isinstance(value, int) and not isinstance(value, bool) and name in allow_int:
            body[name] = str(value)
        elif value is None:
            raise BadRequest("invalid_request", f"field {name!r} is required, not null")
        elif not isinstance(value, str):
            raise BadRequest("invalid_request", f"field {name!r} must be a string")
        elif not value.isascii() and not _is_utf8_text(value):
            raise BadRequest("invalid_request", f"field {name!r} has an unpaired surrogate")
    return body
