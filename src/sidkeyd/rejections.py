"""``request.rejected`` audit lines, aggregated so that a refused client cannot flood the log.

The first rejection of a peer uid for a reason is logged in full. Repeats within ``window_s``
are counted, and logged once as ``request.rejected_repeated`` (uid, reason, count) when the
window ends: the record keeps who was refused, why, and how often, in two lines instead of
thousands.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

DEFAULT_WINDOW_S = 10.0
MAX_OPEN_WINDOWS = 4096  # past this (a uid-hopping flood), rejections are logged one by one

Schedule = Callable[[float, Callable[[], None]], object]


@dataclass
class _Window:
    ends: float
    status: int
    repeated: int = 0


class RejectionLog:
    def __init__(
        self,
        log: Any,
        *,
        window_s: float = DEFAULT_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
        schedule: Schedule | None = None,
    ) -> None:
        self._log = log
        self._window_s = window_s
        self._clock = clock
        self._schedule = schedule  # loop.call_later; None: flushed only by later rejections
        self._windows: dict[tuple[int, str], _Window] = {}
        self._timer_armed = False

    def reject(self, status: int, reason: str, **fields: Any) -> None:
        """Log one rejection (``fields`` carry the peer's ``peer_uid``), or count a repeat."""
        now = self._clock()
        key = (int(fields.get("peer_uid", -1)), reason)
        window = self._windows.get(key)
        if window is not None and now < window.ends:
            window.repeated += 1
            return
        if window is not None:
            self._close(key, window)
        if len(self._windows) < MAX_OPEN_WINDOWS:
            self._windows[key] = _Window(ends=now + self._window_s, status=status)
            self._arm_timer()
        self._log.info("request.rejected", status=status, reason=reason, **fields)

    def flush(self, *, everything: bool = False) -> None:
        """Log the counts of windows that ended (all of them with ``everything``)."""
        now = self._clock()
        for key, window in list(self._windows.items()):
            if everything or now >= window.ends:
                self._close(key, window)

    def _close(self, key: tuple[int, str], window: _Window) -> None:
        del self._windows[key]
        if window.repeated:
            uid, reason = key
            self._log.info(
                "request.rejected_repeated",
                status=window.status,
                reason=reason,
                peer_uid=uid,
                repeated=window.repeated,
                window_s=self._window_s,
            )

    def _arm_timer(self) -> None:
        if self._schedule is None or self._timer_armed:
            return
        self._timer_armed = True
        self._schedule(self._window_s, self._on_timer)

    def _on_timer(self) -> None:
        self._timer_armed = False
        self.flush()
        if self._windows:
            self._arm_timer()
