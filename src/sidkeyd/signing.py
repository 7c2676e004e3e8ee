"""The Smile ID signature and its timestamps: pure functions, no I/O.

signature = base64(HMAC-SHA256(api_key, timestamp + partner_id + "sid_request")), UTF-8 in,
standard base64 with ``=`` padding out.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone

from sidkeyd.errors import TimestampError

SUFFIX = "sid_request"

# ISO 8601 extended date-time with a mandatory "T" and a mandatory offset ("Z" or +hh:mm,
# +hhmm, +hh). Seconds and fractions are optional, as ISO 8601 allows.
_TIMESTAMP = re.compile(
    r"(?P<date>\d{4}-\d{2}-\d{2})T(?P<hour>\d{2}):(?P<minute>\d{2})"
    r"(?::(?P<second>\d{2})(?:[.,](?P<fraction>\d{1,9}))?)?"
    r"(?P<offset>Z|[+-]\d{2}(?::?\d{2})?)",
    re.ASCII,  # \d would otherwise accept any Unicode digit, e.g. Arabic-Indic
)


def compute_signature(api_key: str, timestamp: str, partner_id: str) -> str:
    """The reference implementation: one call, no caching. Used by tests and ``verify``."""
    message = (timestamp + partner_id + SUFFIX).encode("utf-8")
    digest = hmac.new(api_key.encode("utf-8"), message, hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def signed_message(timestamp: str, partner_id: str) -> bytes:
    """What the HMAC covers: the bytes a remote signer is sent (the key never leaves it)."""
    return (timestamp + partner_id + SUFFIX).encode("utf-8")


def whole_second(epoch_s: int) -> str:
    """A presigned timestamp: ``format_timestamp``'s format at a whole second (``.000Z``)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(epoch_s))


class Signer:
    """A pre-keyed HMAC: the key schedule is done once, each signature copies it.

    Holds no raw key (only the HMAC's internal state), and its repr says nothing about it.
    """

    __slots__ = ("_mac",)

    def __init__(self, api_key: str) -> None:
        self._mac = hmac.new(api_key.encode("utf-8"), digestmod=hashlib.sha256)

    def sign(self, timestamp: str, partner_id: str) -> str:
        mac = self._mac.copy()
        mac.update((timestamp + partner_id + SUFFIX).encode("utf-8"))
        return base64.b64encode(mac.digest()).decode("ascii")

    def verify(self, timestamp: str, partner_id: str, signature: str) -> bool:
        """Constant-time comparison of the exact padded base64 string."""
        expected = self.sign(timestamp, partner_id).encode("ascii")
        return hmac.compare_digest(expected, signature.encode("utf-8", "surrogatepass"))

    def __repr__(self) -> str:
        return "Signer(<keyed>)"


def format_timestamp(now: datetime) -> str:
    """UTC with milliseconds and "Z", as JavaScript's toISOString() writes it."""
    now = now.astimezone(UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


class TimestampClock:
    """UTC "now" with ``digits`` fractional digits and "Z"; the per-second prefix is cached.

    Integer nanoseconds, not float seconds: a float would turn .123 into .122. The sign path
    uses milliseconds (the vendor's format); the audit log uses microseconds.
    """

    __slots__ = ("_divisor", "_prefix", "_second", "_time_ns", "_width")

    def __init__(self, time_ns: Callable[[], int] = time.time_ns, digits: int = 3) -> None:
        self._time_ns = time_ns
        self._divisor = 10 ** (9 - digits)
        self._width = digits
        self._second = -1
        self._prefix = ""

    def now(self) -> str:
        second, nanos = divmod(self._time_ns(), 1_000_000_000)
        if second != self._second:
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second))
            self._second = second
        return f"{self._prefix}{nanos // self._divisor:0{self._width}d}Z"


def parse_timestamp(text: str) -> datetime:
    """Parse a caller's ISO 8601 date-time; refuse anything without "T" and an offset."""
    match = _TIMESTAMP.fullmatch(text)
    if match is None:
        raise TimestampError(
            "timestamp must be an ISO 8601 date-time with 'T' and an offset or 'Z', "
            "e.g. 2026-11-25T22:04:11.123Z"
        )
    year, month, day = (int(part) for part in match["date"].split("-"))
    fraction = (match["fraction"] or "0")[:6].ljust(6, "0")
    offset = match["offset"]
    try:
        tz = UTC if offset == "Z" else timezone(_offset(offset))
        return datetime(
            year,
            month,
            day,
            int(match["hour"]),
            int(match["minute"]),
            int(match["second"] or 0),
            int(fraction),
            tzinfo=tz,
        )
    except ValueError as exc:
        raise TimestampError(f"timestamp is not a valid date-time: {exc}") from None


# Every UTC offset in use lies within -12:00 (Baker Island) and +14:00 (Kiribati).
_MIN_OFFSET, _MAX_OFFSET = timedelta(hours=-12), timedelta(hours=14)


def _offset(text: str) -> timedelta:
    sign = -1 if text[0] == "-" else 1
    digits = text[1:].replace(":", "")
    hours, minutes = int(digits[:2]), int(digits[2:4] or 0)
    offset = sign * timedelta(hours=hours, minutes=minutes)
    if minutes > 59 or not _MIN_OFFSET <= offset <= _MAX_OFFSET:
        raise ValueError("the UTC offset must lie within -12:00 and +14:00")
    return offset


def check_timestamp(text: str, now: datetime, skew: timedelta) -> None:
    """Raise TimestampError unless ``text`` is well formed and within ``skew`` of ``now``."""
    when = parse_timestamp(text)
    if abs(when - now) > skew:
        raise TimestampError(
            f"timestamp is more than {int(skew.total_seconds())}s away from the daemon's clock"
        )
