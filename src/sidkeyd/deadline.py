"""A loop timer whose deadline moves: the connection timers of the transport.

Moving the deadline is a store, not a new timer: the timer wakes at most every ``tick``
seconds, looks, and sleeps again until the deadline passes. That keeps the sign path (which
moves the idle and read deadlines on every request) free of timer churn.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Deadline:
    def __init__(
        self, loop: asyncio.AbstractEventLoop, tick: float, on_expiry: Callable[[], None]
    ) -> None:
        self._loop = loop
        self._tick = tick
        self._on_expiry = on_expiry
        self._handle: asyncio.TimerHandle | None = None
        self._at = 0.0

    @property
    def running(self) -> bool:
        """False once it expired (or was cancelled) and was not moved since."""
        return self._handle is not None

    def move(self, seconds: float) -> None:
        """Expire ``seconds`` from now (sooner or later than before)."""
        self._at = self._loop.time() + seconds
        if self._handle is None:
            self._handle = self._loop.call_later(self._tick, self._wake)

    def start(self, seconds: float) -> None:
        """Expire ``seconds`` from now, unless already running (then keep its deadline)."""
        if self._handle is None:
            self.move(seconds)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _wake(self) -> None:
        self._handle = None
        left = self._at - self._loop.time()
        if left > 0:
            self._handle = self._loop.call_later(min(self._tick, left), self._wake)
        else:
            self._on_expiry()
