"""``request.rejected`` audit lines, aggregated so that a refused client cannot flood the log.

The first rejection of a peer uid for a reason on a path is logged in full. Repeats within
``window_s`` are counted, and logged once as ``request.rejected_repeated`` (uid, reason, path,
count, and the distinct pids seen, up to ``MAX_PIDS``) when the window ends: the record keeps
who was refused, where, why and how often, in two lines instead of thousands. A refusal on
another path (an admin route after a sign) opens a window of its own, so it is never hidden.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

DEFAULT_WINDOW_S = 10.0
MAX_OPEN_WINDOWS = 4096  # past this (a uid-hopping flood), rejections are logged one by one
MAX_PIDS = 16  # distinct pids named in a repeated line

Schedule = Callable[[float, Callable[[], None]], object]


@dataclass
class _Window:
    ends: float
    status: int
    repeated: int = 0
    pids: set[int] = field(default_factory=set)


class RejectionLog:
    def __init__(
        self,
        log: Any,
        *,
        window_s: float = DEFAULT_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
        schedule: Schedule | None = None,
        counted: Callable[[str], None] | None = None,
    ) -> None:
        self._log = log
        self._window_s = window_s
        self._clock = clock
        self._schedule = schedule  # loop.call_later; None: flushed only by later rejections
        self._counted = counted  # every refusal, aggregated in the log or not (metrics)
        self._windows: dict[tuple[int, str, str | None], _Window] = {}
        self._timer_armed = False

    def reject(self, status: int, reason: str, **fields: Any) -> None:
        """Log one rejection (``fields`` carry the peer's ``peer_uid``), or count a repeat."""
        if self._counted is not None:
            self._counted(reason)
        now = self._clock()
        key = (int(fields.get("peer_uid", -1)), reason, fields.get("path"))
        window = self._windows.get(key)
        if window is not None and now < window.ends:
            window.repeated += 1
            if len(window.pids) < MAX_PIDS:
                window.pids.add(int(fields.get("peer_pid", 0)))
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

    def _close(self, key: tuple[int, str, str | None], window: _Window) -> None:
        del self._windows[key]
        if window.repeated:
            uid, reason, path = key
            self._log.info(
                "request.rejected_repeated",
                status=window.status,
                reason=reason,
                path=path,
                peer_uid=uid,
                peer_pids=sorted(window.pids),
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
