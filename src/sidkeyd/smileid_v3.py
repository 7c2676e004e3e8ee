"""Smile ID's V3 token endpoint: one blocking ``POST /v3/token`` with the key held.

What ``usesmileid`` does (``generated/operations.py``): the partner id and the raw key in the
``smileid-partner-id`` and ``smileid-api-key`` headers, no body; the answer is ``{"token": JWT}``
whose ``exp`` claim is its only expiry. Called off the event loop. Failures become
``SmileIdError`` with a code, and never carry the endpoint's words: an answer could echo the
request's headers, and so the key.
"""

from __future__ import annotations

import base64
import http.client
import json
import math
import ssl
from urllib.parse import urlsplit

from sidkeyd import __version__
from sidkeyd.config import SmileIdV3Config
from sidkeyd.errors import SmileIdError

MAX_ANSWER_BYTES = 64 * 1024


def fetch_token(config: SmileIdV3Config, partner_id: str, api_key: str) -> tuple[str, int | None]:
    """The token and its ``exp`` (None when it has none), or ``SmileIdError``."""
    url = urlsplit(config.url)
    context = ssl.create_default_context()
    if config.ca_file is not None:
        context.load_verify_locations(cafile=str(config.ca_file))  # added to the system's
    connection = http.client.HTTPSConnection(
        url.hostname or "", url.port or 443, timeout=config.timeout.total_seconds(), context=context
    )
    where = f"{url.hostname}:{url.port or 443}"
    try:
        connection.request(
            "POST",
            url.path + "/v3/token",
            headers={
                "smileid-partner-id": partner_id,
                "smileid-api-key": api_key,
                "User-Agent": f"sidkeyd/{__version__}",
            },
        )
        answer = connection.getresponse()
        body = answer.read(MAX_ANSWER_BYTES + 1)
    except TimeoutError:
        raise SmileIdError(
            "smileid_timeout", f"Smile ID ({where}) did not answer the token request in time", 504
        ) from None
    except ssl.SSLCertVerificationError:
        raise SmileIdError(
            "smileid_tls_error", f"Smile ID's certificate ({where}) did not verify"
        ) from None
    except (OSError, http.client.HTTPException) as exc:
        raise SmileIdError(
            "smileid_unreachable", f"Smile ID ({where}) unreachable: {type(exc).__name__}", 503
        ) from None
    finally:
        connection.close()
    return _token_from(answer.status, body, where)


def _token_from(status: int, body: bytes, where: str) -> tuple[str, int | None]:
    if status in (401, 403):
        raise SmileIdError(
            "smileid_refused_key", f"Smile ID ({where}) refused the key ({status})", refused=True
        )
    if status >= 500:
        raise SmileIdError(
            "smileid_error", f"Smile ID ({where}) failed the token request ({status})"
        )
    if status != 200 or len(body) > MAX_ANSWER_BYTES:
        raise SmileIdError("smileid_bad_response", f"Smile ID ({where}) answered {status}")
    try:
        token = json.loads(body).get("token")
    except (ValueError, AttributeError):
        token = None
    if not isinstance(token, str) or not token or not token.isascii() or len(token) > 8192:
        raise SmileIdError(
            "smileid_bad_response", f"Smile ID ({where}) answered without a usable token"
        )
    return token, jwt_expiry(token)


def jwt_expiry(token: str) -> int | None:
    """The ``exp`` claim of a JWT, or None when it cannot be decoded (the token is used once)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        exp = claims.get("exp")
    except (ValueError, IndexError, AttributeError):
        return None
    if not isinstance(exp, int | float) or isinstance(exp, bool) or not math.isfinite(exp):
        return None  # Infinity and NaN are valid to Python's json, and no expiry
    return int(exp) if 0 < exp < _LAST_EXP else None


_LAST_EXP = 4102444800  # 2100-01-01: beyond is no real expiry (and past datetime's range)
