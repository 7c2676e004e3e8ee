"""Rejection audit lines: the first in full, repeats counted, nothing lost."""

from __future__ import annotations

from typing import Any

from structlog.testing import capture_logs

from sidkeyd.log import get_logger
from sidkeyd.rejections import RejectionLog


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def rejections(clock: Clock) -> RejectionLog:
    return RejectionLog(get_logger(), window_s=10.0, clock=clock)


def events(logs: list[dict[str, Any]]) -> list[tuple[str, Any, Any]]:
    return [(e["event"], e.get("peer_uid"), e.get("repeated")) for e in logs]


def test_repeats_within_the_window_are_one_count_line() -> None:
    """1,000 refusals of one uid for one reason: the first line, then one line counting 999."""
    clock = Clock()
    log = rejections(clock)
    with capture_logs() as logs:
        for _ in range(1000):
            log.reject(403, "forbidden", peer_uid=1000, peer_pid=7)
        clock.now = 10.0
        log.flush()
    assert [
        ("request.rejected", 1000, None),
        ("request.rejected_repeated", 1000, 999),
    ] == events(logs)


def test_other_uids_and_reasons_are_logged_apart() -> None:
    """A flood from one uid hides neither another uid nor another reason."""
    log = rejections(Clock())
    with capture_logs() as logs:
        log.reject(403, "forbidden", peer_uid=1000)
        log.reject(403, "forbidden", peer_uid=1000)
        log.reject(403, "forbidden", peer_uid=2000)
        log.reject(400, "invalid_json", peer_uid=1000)
    assert [("request.rejected", 1000, None), ("request.rejected", 2000, None)] == [
        e for e in events(logs) if e[0] == "request.rejected"
    ][:2]
    assert 3 == len(logs)


def test_a_new_window_logs_in_full_again() -> None:
    """After the window the next refusal is a full line, after the count of the last window."""
    clock = Clock()
    log = rejections(clock)
    with capture_logs() as logs:
        log.reject(429, "rate_limited", peer_uid=5)
        log.reject(429, "rate_limited", peer_uid=5)
        clock.now = 11.0
        log.reject(429, "rate_limited", peer_uid=5)
    assert [
        ("request.rejected", 5, None),
        ("request.rejected_repeated", 5, 1),
        ("request.rejected", 5, None),
    ] == events(logs)


def test_flush_everything_loses_no_count_at_shutdown() -> None:
    """Counts of windows still open are written by flush(everything=True)."""
    log = rejections(Clock())
    with capture_logs() as logs:
        log.reject(403, "forbidden", peer_uid=1)
        log.reject(403, "forbidden", peer_uid=1)
        log.flush(everything=True)
    assert ("request.rejected_repeated", 1, 1) == events(logs)[-1]


def test_the_timer_flushes_a_window_no_later_refusal_closes() -> None:
    """With a scheduler, an ended window is counted without waiting for another refusal."""
    clock = Clock()
    timers: list[tuple[float, Any]] = []
    log = RejectionLog(
        get_logger(), window_s=10.0, clock=clock, schedule=lambda d, f: timers.append((d, f))
    )
    with capture_logs() as logs:
        log.reject(403, "forbidden", peer_uid=1)
        log.reject(403, "forbidden", peer_uid=1)
        clock.now = 10.0
        delay, fire = timers.pop()
        fire()
    assert (10.0, ("request.rejected_repeated", 1, 1)) == (delay, events(logs)[-1])


def test_a_refusal_on_another_path_is_never_hidden_by_a_window() -> None:
    """Refused on /v1/sign, then on the admin route: both logged in full; pids are counted."""
    log = rejections(Clock())
    with capture_logs() as logs:
        log.reject(403, "forbidden", peer_uid=7, peer_pid=1, path="/v1/sign")
        log.reject(403, "forbidden", peer_uid=7, peer_pid=2, path="/v1/sign")
        log.reject(403, "forbidden", peer_uid=7, peer_pid=3, path="/v1/refresh")
        log.flush(everything=True)
    full = [e["path"] for e in logs if e["event"] == "request.rejected"]
    repeated = next(e for e in logs if e["event"] == "request.rejected_repeated")
    assert (["/v1/sign", "/v1/refresh"], [2], "/v1/sign") == (
        full,
        repeated["peer_pids"],
        repeated["path"],
    )
