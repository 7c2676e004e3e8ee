"""Durations with units, as written in config files."""

from __future__ import annotations

from datetime import timedelta

import pytest

from sidkeyd.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("250ms", timedelta(milliseconds=250)),
        ("30s", timedelta(seconds=30)),
        ("5m", timedelta(minutes=5)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("2d", timedelta(days=2)),
        ("1.5s", timedelta(seconds=1.5)),
        ("0s", timedelta(0)),
    ],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    """Numbers with units, also combined."""
    assert expected == parse_duration(text)


@pytest.mark.parametrize("text", ["60", "", "5 minutes", "m5", "5x", "-5s", "5s5"])
def test_parse_duration_refuses_missing_or_unknown_units(text: str) -> None:
    """A bare number or an unknown unit is an error naming the expected form."""
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(timedelta(minutes=5), "5m"), (timedelta(seconds=90), "90s"), (timedelta(0.5), "12h")],
)
def test_format_duration(value: timedelta, expected: str) -> None:
    """The shortest exact spelling."""
    assert expected == format_duration(value)
