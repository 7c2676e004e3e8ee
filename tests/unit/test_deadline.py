"""The movable deadline behind the transport's read, idle and write timers, on a fake clock."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sidkeyd.deadline import Deadline


class FakeLoop:
    """time() and call_later() on a clock the test moves; run() fires what is due."""

    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[tuple[float, Callable[[], None], FakeHandle]] = []

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[[], None]) -> FakeHandle:
        handle = FakeHandle()
        self.timers.append((self.now + delay, callback, handle))
        return handle

    def advance(self, seconds: float) -> None:
        self.now += seconds
        while due := [t for t in self.timers if t[0] <= self.now and not t[2].cancelled]:
            self.timers.remove(due[0])
            due[0][1]()


class FakeHandle:
    cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


def deadline(tick: float, fired: list[float], loop: FakeLoop) -> Deadline:
    loop_any: Any = loop
    return Deadline(loop_any, tick, lambda: fired.append(loop.now))


def test_moving_the_deadline_later_delays_expiry() -> None:
    """Moved before it fires, it expires at the new deadline, once."""
    loop, fired = FakeLoop(), []
    timer = deadline(1.0, fired, loop)
    timer.move(2.0)
    loop.advance(1.5)
    timer.move(5.0)  # from now: 6.5
    for _ in range(20):
        loop.advance(0.5)
    assert ([6.5], False) == (fired, timer.running)


def test_it_expires_no_later_than_a_tick_after_the_deadline() -> None:
    """With the clock moving a tick at a time, expiry comes in the tick that passes it."""
    loop, fired = FakeLoop(), []
    timer = deadline(1.0, fired, loop)
    timer.move(2.5)
    for _ in range(5):
        loop.advance(1.0)
    assert [3.0] == fired


def test_start_keeps_a_running_deadline_and_cancel_stops_it() -> None:
    """start() does not move a running deadline; cancel() means it never fires."""
    loop, fired = FakeLoop(), []
    timer = deadline(10.0, fired, loop)
    timer.start(10.0)
    timer.start(0.0)  # ignored: it is running
    loop.advance(5.0)
    running = timer.running
    timer.cancel()
    loop.advance(100.0)
    assert (True, [], False) == (running, fired, timer.running)
