"""Keeping key material out of any text the daemon shows: responses, reasons and log lines.

One home for the ``[REDACTED]`` marker, for truncation, and for making a backend's own words
(an AWS error message, a Vault error list, a TLS library's complaint) fit to repeat. A hostile
or buggy backend may put secret text into an error body, including a key this daemon has never
held, so backend text is never trusted: it is folded, scrubbed of every key known, stripped of
every long token that looks like key material, and truncated.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

REDACTED = "[REDACTED]"
ELIDED = "[...]"  # a token that looked like key material, removed unread
MAX_BACKEND_TEXT_CHARS = 200

# A run of the characters keys, tokens and base64 are made of, long enough to be one.
_TOKEN = re.compile(r"[A-Za-z0-9+/=_\-]{20,}")


def truncate(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, marked when it was cut."""
    return text if len(text) <= limit else text[:limit] + "...(truncated)"


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every occurrence of every non-empty secret replaced by ``[REDACTED]``."""
    for secret in secrets:
        if secret and secret in text:
            text = text.replace(secret, REDACTED)
    return text


def _looks_like_key(token: str) -> bool:
    # Random key material mixes letters and digits; words, CamelCase error codes and plain
    # numbers (account ids, versions) do not.
    return any(c.isdigit() for c in token) and any(c.isalpha() for c in token)


def backend_text(
    text: str, secrets: Iterable[str] = (), limit: int = MAX_BACKEND_TEXT_CHARS
) -> str:
    """Text a backend wrote, made safe to show: see the module docstring."""
    folded = scrub(" ".join(text.split()), secrets)
    stripped = _TOKEN.sub(lambda m: ELIDED if _looks_like_key(m.group()) else m.group(), folded)
    return truncate(stripped, limit)
