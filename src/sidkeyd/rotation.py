"""The rotation engine: the one object the server and the app talk to about keys.

``KeyManager`` answers the sign path, starts and stops the machinery, turns signals, watcher
notifications and rejection reports (rate-limited per environment) into checks, and reports
status. It delegates: running a check is ``checks.CheckRunner``'s; what its result *means* is
``freshness.Freshness``'s; *when* the next check runs is ``scheduling.CheckSchedule``'s;
starting and closing the sources is ``sources.lifecycle``'s. ``signing_key()`` does no I/O and no
clock arithmetic: timers flip the freshness state.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sidkeyd.checks import CheckOutcome, CheckRunner
from sidkeyd.config import EnvironmentConfig
from sidkeyd.freshness import Freshness, Health, Trigger
from sidkeyd.keystore import KeySnapshot, KeyStore
from sidkeyd.log import get_logger
from sidkeyd.scheduling import CheckSchedule
from sidkeyd.sources import Source, WatchingSource
from sidkeyd.sources.lifecycle import close_sources, start_watchers
from sidkeyd.status import EnvironmentStatus, ErrorStatus, iso

__all__ = ["CheckOutcome", "Health", "KeyManager", "ReportOutcome", "Trigger"]


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class ReportOutcome:
    """What a client that was rejected by Smile ID should do next: sign with ``key_version``."""

    environment: str
    key_version: str | None
    checked: bool  # a backend check ran (or was joined) for this report
    changed: bool
    reason: str  # "checked", "already_rotated" or "rate_limited"


class KeyManager:
    """Holds the key store's contents current; the server asks it for keys and forced checks."""

    def __init__(
        self,
        environments: Mapping[str, EnvironmentConfig],
        sources: Mapping[str, Source],
        store: KeyStore,
        *,
        shutdown_timeout_s: float = 10.0,
        now: Callable[[], datetime] = utcnow,
        rng: random.Random | None = None,
        hostname: str | None = None,
    ) -> None:
        self._environments = dict(environments)
        self._sources = sources
        self._store = store
        self._shutdown_timeout_s = shutdown_timeout_s
        self._now = now
        self._fresh = {
            name: Freshness(name, env.source, env.refresh) for name, env in environments.items()
        }
        self._schedule = CheckSchedule(
            {name: env.refresh for name, env in environments.items()},
            self._scheduled_check,
            hostname=hostname or socket.gethostname(),
            rng=rng or random.Random(),
            now=now,
        )
        self._checks = CheckRunner(
            self._environments, sources, store, self._fresh, self._schedule, now
        )
        self._last_report_check: dict[str, float] = {}  # loop time of a client-forced check
        self._background: set[asyncio.Future[CheckOutcome]] = set()
        self._closing: set[asyncio.Future[None]] = set()  # sources a reload retired
        self._log = get_logger()

    # -- the sign path -------------------------------------------------------------------

    def signing_key(self, environment: str) -> KeySnapshot:
        """The key to sign with now, or KeyUnavailableError. No I/O."""
        fresh = self._fresh[environment]
        if fresh.refusal is not None:
            raise fresh.refusal
        snapshot = self._store.get(environment)
        if snapshot is None:
            raise fresh.no_key()
        return snapshot

    def verification_keys(self, environment: str) -> list[KeySnapshot]:
        """The current key, then the previous one while ``verify_previous_for`` lasts."""
        keys = [self.signing_key(environment)]
        retired = self._store.previous(environment)
        window = self._fresh[environment].refresh.verify_previous_for
        if retired is not None and self._now() - retired.retired_at < window:
            keys.append(retired.snapshot)
        return keys

    def __contains__(self, environment: object) -> bool:
        return environment in self._fresh

    @property
    def environments(self) -> list[str]:
        return list(self._fresh)

    def observe_checks(self, observe: Callable[[str, str, str, float], None]) -> None:
        """Report each check (environment, trigger, result, seconds) to ``observe``."""
        self._checks.observe = observe

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Load every environment once, then start the schedule and the watchers."""
        await asyncio.gather(*(self.check(name, Trigger.STARTUP) for name in self._fresh))
        self._schedule.start()
        for name, fresh in self._fresh.items():
            # A failed startup load retries on the backoff schedule, not a whole interval later.
            if fresh.consecutive_failures:
                self._schedule.retry_after_failure(name, fresh.consecutive_failures)
        start_watchers(self._sources, self._notified)

    def reconfigure(
        self,
        environments: Mapping[str, EnvironmentConfig],
        sources: Mapping[str, Source],
        renewed: list[str],
    ) -> None:
        """A reload's environments and sources, swapped in one step (no await).

        ``renewed`` environments (changed: what is read) and removed ones lose their key now;
        the others keep theirs, their state and their next check. Sources no longer in
        ``sources`` are closed in the background; new watching ones start watching.
        """
        dropped = [name for name in self._environments if name not in environments]
        for name in [*dropped, *renewed]:
            held = self._store.drop(name)
            if held is not None and held.remote is not None:
                held.remote.retire()  # else its refills call the backend for a key not held
            self._last_report_check.pop(name, None)
        fresh = {}
        for name, env in environments.items():
            kept = None if name in renewed else self._fresh.get(name)
            if kept is not None:
                kept.refresh = env.refresh
            fresh[name] = kept or Freshness(name, env.source, env.refresh)
        retired = {n: s for n, s in self._sources.items() if sources.get(n) is not s}
        started = {n: s for n, s in sources.items() if self._sources.get(n) is not s}
        self._environments, self._sources, self._fresh = dict(environments), sources, fresh
        self._checks.reconfigure(self._environments, sources, fresh, [*dropped, *renewed])
        self._schedule.update({n: e.refresh for n, e in environments.items()}, renewed)
        if self._schedule.running:
            start_watchers(started, self._notified)
        if retired:
            closing = asyncio.ensure_future(
                close_sources(retired, self._shutdown_timeout_s, self._log)
            )
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)

    async def _scheduled_check(self, environment: str) -> None:
        # Cancelled at shutdown: APScheduler would print that as a job failure on stderr.
        with contextlib.suppress(asyncio.CancelledError):
            await self.check(environment, Trigger.SCHEDULE)

    async def stop(self, timeout_s: float | None = None) -> None:
        """Stop checking and close the sources, within ``timeout_s`` (shutdown_timeout)."""
        self._schedule.shutdown()
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self._checks.stop()
        budget = self._shutdown_timeout_s if timeout_s is None else timeout_s
        await close_sources(self._sources, budget, self._log)
        if self._closing:  # sources retired by a reload, still closing: same budget
            await asyncio.wait(self._closing, timeout=budget)

    def check_soon(
        self, trigger: Trigger, names: list[str] | None = None, *, force: bool = True, **fields: Any
    ) -> None:
        """Start checks without waiting for them (watchers, reloads); forced unless told."""
        for name in self._fresh if names is None else names:
            task = asyncio.ensure_future(self.check(name, trigger, force=force, **fields))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def settle(self) -> None:
        """Wait for every check that is running or was started in the background."""
        await asyncio.sleep(0)  # let call_soon_threadsafe callbacks start their checks
        pending = [*self._checks.in_flight(), *self._background]
        await asyncio.gather(*pending, return_exceptions=True)

    def _notified(self, source_name: str, changed: str) -> None:
        """A watcher says ``changed`` changed: check every environment that holds it."""
        source = self._sources.get(source_name)
        if not isinstance(source, WatchingSource):
            return  # a source a reload retired, still winding down
        names = [
            name
            for name, env in self._environments.items()
            if env.source == source_name and source.matches(env.secret, changed)
        ]
        self.check_soon(Trigger.NOTIFY, names, secret=changed)

    # -- checks --------------------------------------------------------------------------

    async def report(
        self, environment: str, key_version: str, status: str, **peer: Any
    ) -> ReportOutcome:
        """A client says Smile ID rejected a signature made with ``key_version``.

        If that is still the key held, check the backend now: at most one report-forced check
        per ``report_interval``, and concurrent reports join the check in flight.
        """
        held = self._store.get(environment)
        self._log.warning(
            "key.rejection_reported",
            environment=environment,
            key_version=key_version,
            status=status,
            held_version=held.version if held else None,
            **peer,
        )
        if held is not None and held.version != key_version:
            return ReportOutcome(environment, held.version, False, False, "already_rotated")
        if not self._may_force(environment):
            version = held.version if held else None
            return ReportOutcome(environment, version, False, False, "rate_limited")
        outcome = await self.check(
            environment, Trigger.REPORT, force=True, reported_version=key_version, **peer
        )
        return ReportOutcome(environment, outcome.key_version, True, outcome.changed, "checked")

    async def budgeted_check(self, environment: str, trigger: Trigger, **fields: Any) -> bool:
        """A forced check a client caused (an unmatched verify, a key Smile ID refused).

        Under the same budget as reports: one forced check per ``report_interval``, joining
        one in flight; False when the budget is spent and nothing was checked.
        """
        if not self._may_force(environment):
            return False
        await self.check(environment, trigger, force=True, **fields)
        return True

    def _may_force(self, environment: str) -> bool:
        """Whether a client-caused forced check may run (or be joined) now; counts it if so."""
        if self._checks.forced_in_flight(environment):
            return True
        fresh = self._fresh.get(environment)
        if fresh is None:
            return False  # removed by a reload while the request waited
        now = asyncio.get_running_loop().time()
        limit = fresh.refresh.report_interval.total_seconds()
        if now - self._last_report_check.get(environment, float("-inf")) < limit:
            return False
        self._last_report_check[environment] = now
        return True

    async def check(
        self, environment: str, trigger: Trigger, *, force: bool = False, **fields: Any
    ) -> CheckOutcome:
        """Check one environment's key now (see ``checks.CheckRunner.check``)."""
        return await self._checks.check(environment, trigger, force=force, **fields)

    # -- reporting -----------------------------------------------------------------------

    def health(self, environment: str) -> tuple[Health, str | None]:
        return self._fresh[environment].health(self._store.get(environment) is not None)

    def presigned_for_s(self, environment: str) -> float | None:
        """How long a remote signer's presigned table lasts without its backend; None: local."""
        key = self._store.get(environment)
        return key.remote.presigned_for_s() if key is not None and key.remote else None

    def next_check_at(self, environment: str) -> datetime | None:
        return self._schedule.next_check_at(environment)

    def status(self, environment: str) -> EnvironmentStatus:
        """The frozen status of one environment, everything included (the app reduces it)."""
        fresh = self._fresh[environment]
        health, reason = self.health(environment)
        key = self._store.get(environment) if fresh.refusal is None else None
        error = fresh.last_error
        return EnvironmentStatus(
            environment=environment,
            health=health.value,
            reason=reason,
            source=fresh.source,
            partner_id=key.partner_id if key else self._environments[environment].partner_id,
            key_version=key.version if key else None,
            fingerprint=key.fingerprint if key else None,
            served_by=key.served_by if key else None,
            loaded_at=iso(key.loaded_at) if key else None,
            key_age_s=int((self._now() - key.loaded_at).total_seconds()) if key else None,
            last_success_at=iso(fresh.last_success_at),
            last_attempt_at=iso(fresh.last_attempt_at),
            next_check_at=iso(self.next_check_at(environment)),
            consecutive_failures=fresh.consecutive_failures,
            last_error=ErrorStatus(error.kind, error.code, error.reason, iso(fresh.last_error_at))
            if error
            else None,
        )
