"""The per-uid token bucket, on a fake clock."""

from __future__ import annotations

from sidkeyd.ratelimit import RateLimiter, retry_after


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_refusal_then_refill() -> None:
    """burst tokens at once, then a wait of 1/rate per token."""
    clock = Clock()
    limiter = RateLimiter(rate=2.0, burst=3, clock=clock)
    assert [0.0, 0.0, 0.0] == [limiter.acquire(1) for _ in range(3)]
    assert 0.5 == limiter.acquire(1)
    clock.now += 0.5
    assert 0.0 == limiter.acquire(1)


def test_buckets_are_per_key() -> None:
    """One uid's exhaustion does not limit another."""
    limiter = RateLimiter(rate=1.0, burst=1, clock=Clock())
    limiter.acquire(1)
    assert (True, 0.0) == (limiter.acquire(1) > 0, limiter.acquire(2))


def test_retry_after_is_whole_seconds_at_least_one() -> None:
    """Retry-After rounds up and never says 0."""
    assert ("1", "1", "3") == (retry_after(0.01), retry_after(1.0), retry_after(2.2))
