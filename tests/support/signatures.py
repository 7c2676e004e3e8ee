"""The Smile ID signature computed independently of ``sidkeyd.signing``, for test oracles."""

from __future__ import annotations

import base64
import hashlib
import hmac


def expected_signature(key: str, timestamp: str, partner_id: str) -> str:
    """base64(HMAC-SHA256(key, timestamp + partner_id + "sid_request")), written out again."""
    mac = hmac.new(key.encode(), f"{timestamp}{partner_id}sid_request".encode(), hashlib.sha256)
    return base64.b64encode(mac.digest()).decode()
