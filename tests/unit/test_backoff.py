"""The one backoff: bounds, growth, cap, and the first failures."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest

from sidkeyd.backoff import Backoff, backoff_delay

ONE_TO_SIXTY = Backoff(1.0, 60.0)


@pytest.mark.parametrize(
    ("failures", "expected"), [(0, 1.0), (1, 1.0), (2, 2.0), (3, 4.0), (6, 32.0), (7, 60.0)]
)
def test_ceiling_doubles_from_low_up_to_high(failures: int, expected: float) -> None:
    """The ceiling is low for the first failure (and none), then doubles up to high."""
    assert expected == ONE_TO_SIXTY.ceiling(failures)


def test_ceiling_stays_at_high_for_any_number_of_failures() -> None:
    """A very long outage neither overflows nor passes high."""
    assert 60.0 == ONE_TO_SIXTY.ceiling(10**6)


def test_ceiling_is_never_below_low() -> None:
    """A high bound below the low one cannot make the wait shorter than low."""
    assert 5.0 == Backoff(5.0, 1.0).ceiling(3)


@pytest.mark.parametrize("failures", [0, 1])
def test_first_failure_waits_exactly_low(failures: int) -> None:
    """With nothing to jitter between, the first retry (or none) comes after low."""
    assert 1.0 == ONE_TO_SIXTY.delay(failures, random.Random(3))


def test_delay_stays_between_low_and_the_ceiling() -> None:
    """Every draw lies in [low, ceiling(failures)]."""
    rng = random.Random(11)
    out_of_bounds = [
        (failures, delay)
        for failures in range(1, 30)
        for delay in (ONE_TO_SIXTY.delay(failures, rng) for _ in range(50))
        if not 1.0 <= delay <= ONE_TO_SIXTY.ceiling(failures)
    ]
    assert [] == out_of_bounds


def test_delay_is_jittered_across_the_whole_range() -> None:
    """Full jitter: draws after many failures spread from near low to near high."""
    rng = random.Random(5)
    delays = [ONE_TO_SIXTY.delay(20, rng) for _ in range(500)]
    assert (True, True) == (min(delays) < 10.0, max(delays) > 50.0)


def test_backoff_delay_takes_timedeltas_and_draws_the_same_as_backoff() -> None:
    """backoff_delay (the engine's signature) is Backoff.delay on the same rng sequence."""
    low, high = timedelta(seconds=2), timedelta(minutes=5)
    expected = [Backoff(2.0, 300.0).delay(f, random.Random(f)) for f in range(12)]
    actual = [backoff_delay(f, low, high, random.Random(f)) for f in range(12)]
    assert expected == actual
