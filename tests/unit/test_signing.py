"""The signature and its timestamps, checked against openssl and a second implementation."""

from __future__ import annotations

import base64
import shutil
import subprocess
from datetime import UTC, datetime, timedelta

import pytest

from sidkeyd.signing import (
    Signer,
    TimestampClock,
    TimestampError,
    check_timestamp,
    compute_signature,
    format_timestamp,
    parse_timestamp,
)

NOW = datetime(2026, 11, 25, 22, 4, 11, 123000, tzinfo=UTC)


def openssl_signature(key: str, message: str) -> str:
    """HMAC-SHA256 by openssl, base64 here: an implementation independent of Python's hmac."""
    digest = subprocess.run(
        ["openssl", "dgst", "-sha256", "-hmac", key, "-binary"],
        input=message.encode("utf-8"),
        capture_output=True,
        check=True,
    ).stdout
    return base64.b64encode(digest).decode()


needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")


@needs_openssl
@pytest.mark.parametrize(
    ("key", "timestamp", "partner_id"),
    [
        ("513205c6-c420-44e5-ab85-370986dc3f19", "2026-11-25T22:04:11.123Z", "1622"),
        ("api-key", "2026-11-25T22:04:11.123Z", "085"),
        ("clé-ünïcødé-ключ-鍵", "2026-11-25T23:04:11+01:00", "085"),
        ("k", "2026-11-25T22:04Z", "007"),
    ],
)
def test_signature_matches_openssl(key: str, timestamp: str, partner_id: str) -> None:
    """compute_signature and the pre-keyed Signer both equal openssl's HMAC."""
    expected = openssl_signature(key, timestamp + partner_id + "sid_request")
    assert expected == compute_signature(key, timestamp, partner_id)
    assert expected == Signer(key).sign(timestamp, partner_id)


def test_leading_zero_partner_id_is_kept() -> None:
    """ "085" and "85" sign differently: the partner id is a string."""
    assert compute_signature("k", "t", "085") != compute_signature("k", "t", "85")


def test_signature_is_padded_standard_base64() -> None:
    """44 characters ending in "=", the alphabet with + and /."""
    signature = compute_signature("k", "2026-11-25T22:04:11.123Z", "085")
    assert (44, "=") == (len(signature), signature[-1])
    assert base64.b64decode(signature, validate=True)


def test_signer_copies_are_independent() -> None:
    """Signing twice with one Signer gives the same answer (the keyed state is copied)."""
    signer = Signer("k")
    assert signer.sign("a", "1") == signer.sign("a", "1")


def test_signer_verify_accepts_only_the_exact_string() -> None:
    """verify compares the exact padded string; non-ASCII input is a plain mismatch."""
    signer = Signer("k")
    good = signer.sign("t", "085")
    assert signer.verify("t", "085", good)
    assert not signer.verify("t", "085", good.rstrip("="))
    assert not signer.verify("t", "085", "é" * 44)


def test_signer_repr_reveals_nothing() -> None:
    """The repr of a Signer names no key."""
    assert "secret-key" not in repr(Signer("secret-key"))


def test_format_timestamp_is_utc_milliseconds_z() -> None:
    """yyyy-MM-dd'T'HH:mm:ss.fffZ, as toISOString() writes it."""
    offset = NOW.astimezone(UTC).astimezone(__import__("datetime").timezone(timedelta(hours=3)))
    assert "2026-11-25T22:04:11.123Z" == format_timestamp(offset)


def test_clock_matches_format_timestamp() -> None:
    """The cached-prefix clock writes what format_timestamp writes, across a second boundary."""
    base = int(NOW.replace(microsecond=0).timestamp()) * 10**9 + 123_000_000
    times = iter([base, base + 500_000_000, base + 1_001_999_999])
    clock = TimestampClock(lambda: next(times))
    assert [
        "2026-11-25T22:04:11.123Z",
        "2026-11-25T22:04:11.623Z",
        "2026-11-25T22:04:12.124Z",
    ] == [clock.now(), clock.now(), clock.now()]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-25T22:04:11.123Z", NOW),
        ("2026-11-25T22:04:11Z", NOW.replace(microsecond=0)),
        ("2026-11-25T22:04Z", NOW.replace(second=0, microsecond=0)),
        ("2026-11-25T23:04:11.123+01:00", NOW),
        ("2026-11-25T23:04:11.123+0100", NOW),
        ("2026-11-25T17:04:11.123-05", NOW),
        ("2026-11-25T22:04:11.123456789Z", NOW.replace(microsecond=123456)),
        ("2026-11-25T22:04:11,123Z", NOW),
    ],
)
def test_accepted_timestamp_forms(text: str, expected: datetime) -> None:
    """ISO 8601 date-times with T and an offset, with or without seconds and fractions."""
    assert expected == parse_timestamp(text)


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-25 22:04:11Z",  # space instead of T
        "2026-11-25T22:04:11.123",  # no offset
        "1795644251",  # epoch digits
        "1795644251123",
        "2026-11-25",
        "2026-13-25T22:04:11Z",  # month 13
        "2026-11-25T22:04:11+24:00",
        "2026-11-25t22:04:11z",
        "\u0662\u0660\u0662\u0666-11-25T22:04:11Z",  # Arabic-Indic digits in the year
        "",
    ],
)
def test_refused_timestamp_forms(text: str) -> None:
    """Anything else is refused with a TimestampError."""
    with pytest.raises(TimestampError):
        parse_timestamp(text)


@pytest.mark.parametrize("offset", ["+14:00", "-12:00", "+05:45", "-09:30", "+0000"])
def test_real_utc_offsets_are_accepted(offset: str) -> None:
    """Every offset in use, Kiribati's +14:00 and Baker Island's -12:00 included."""
    assert parse_timestamp(f"2026-11-25T22:04:11{offset}").utcoffset() is not None


@pytest.mark.parametrize("offset", ["+14:01", "+23:59", "-12:01", "-23:59", "+15", "+05:60"])
def test_offsets_no_place_uses_are_refused(offset: str) -> None:
    """Offsets beyond -12:00...+14:00 name no real place: refused, not signed."""
    with pytest.raises(TimestampError, match="-12:00 and \\+14:00"):
        parse_timestamp(f"2026-11-25T22:04:11{offset}")


def test_timestamp_outside_skew_is_refused() -> None:
    """Six minutes away with a five-minute skew is refused, either way."""
    skew = timedelta(minutes=5)
    check_timestamp("2026-11-25T22:08:11Z", NOW, skew)
    for text in ("2026-11-25T22:10:12Z", "2026-11-25T21:58:10Z"):
        with pytest.raises(TimestampError, match="away from the daemon's clock"):
            check_timestamp(text, NOW, skew)


def test_clock_with_microseconds() -> None:
    """digits=6 writes microseconds, as the audit log's timestamps."""
    base = int(NOW.replace(microsecond=0).timestamp()) * 10**9 + 123_456_789
    assert "2026-11-25T22:04:11.123456Z" == TimestampClock(lambda: base, digits=6).now()
