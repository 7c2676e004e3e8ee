"""When each environment is checked next: the one owner of that answer.

An APScheduler interval job per environment (``interval`` with ``jitter``, starting at a stable
per-host offset so a fleet does not hit the backend in the same second), moved earlier after a
failure by the codebase's one backoff (``backoff.backoff_delay``), never later than the interval.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from sidkeyd.backoff import backoff_delay
from sidkeyd.config import RefreshConfig

Job = Callable[[str], Awaitable[None]]


def host_offset(host: str, environment: str, interval: timedelta) -> timedelta:
    """A stable fraction of the interval per host and environment, to spread a fleet's checks."""
    digest = hashlib.sha256(f"{host}\x00{environment}".encode()).digest()
    fraction = int.from_bytes(digest[:4], "big") / 2**32
    return interval * fraction


class CheckSchedule:
    def __init__(
        self,
        refresh: dict[str, RefreshConfig],
        job: Job,
        *,
        hostname: str,
        rng: random.Random,
        now: Callable[[], datetime],
    ) -> None:
        self._refresh = refresh
        self._job = job
        self._hostname = hostname
        self._rng = rng
        self._now = now
        self._scheduler: AsyncIOScheduler | None = None

    def start(self) -> None:
        """Add one interval job per environment and start; needs the running event loop."""
        self._scheduler = AsyncIOScheduler(timezone=UTC)
        for name in self._refresh:
            self._add_job(name)
        self._scheduler.start()

    def _add_job(self, name: str) -> None:
        assert self._scheduler is not None
        interval = self._refresh[name].interval
        self._scheduler.add_job(
            self._job,
            IntervalTrigger(
                seconds=interval.total_seconds(),
                jitter=interval.total_seconds() * self._refresh[name].jitter or None,
                start_date=self._now() + host_offset(self._hostname, name, interval),
                timezone=UTC,
            ),
            args=(name,),
            id=name,
            coalesce=True,
            max_instances=1,
            misfire_grace_time=max(1, int(interval.total_seconds())),
            replace_existing=True,
        )

    def update(self, refresh: dict[str, RefreshConfig], renewed: list[str]) -> None:
        """A reload: remove the jobs of environments gone, (re)add those new, renewed or with
        new refresh settings; the others keep their next run."""
        old, self._refresh = self._refresh, refresh
        if self._scheduler is None:
            return  # start() adds every job
        for name in old.keys() - refresh.keys():
            self._scheduler.remove_job(name)
        for name, settings in refresh.items():
            if name in renewed or old.get(name) != settings:
                self._add_job(name)

    @property
    def running(self) -> bool:
        return self._scheduler is not None and self._scheduler.running

    def retry_after_failure(self, name: str, failures: int) -> float | None:
        """Bring the next check forward by the backoff for ``failures``; None before start."""
        if self._scheduler is None:
            return None
        refresh = self._refresh[name]
        delay = backoff_delay(failures, refresh.backoff_min, refresh.backoff_max, self._rng)
        delay = min(delay, refresh.interval.total_seconds())
        self._scheduler.modify_job(name, next_run_time=self._now() + timedelta(seconds=delay))
        return round(delay, 3)

    def next_check_at(self, name: str) -> datetime | None:
        if self._scheduler is None:
            return None
        job = self._scheduler.get_job(name)
        return job.next_run_time if job is not None else None

    def shutdown(self) -> None:
        if self.running:
            assert self._scheduler is not None
            self._scheduler.shutdown(wait=False)
