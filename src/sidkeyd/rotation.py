"""The rotation engine: it runs the checks that keep each environment's key current.

It owns the checks themselves (single flight, off the loop), the report rate limit and the two
freshness timers, and it answers the sign path. What a check's result *means* is
``freshness.Freshness``; *when* the next check runs is ``scheduling.CheckSchedule``; starting
and closing the sources is ``sources.lifecycle``. ``signing_key()`` does no I/O and no clock
arithmetic: timers flip the freshness state.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sidkeyd.config import EnvironmentConfig
from sidkeyd.errors import InvalidSecretError, SourceError, TransientSourceError
from sidkeyd.freshness import Freshness, Health, Installed, Transition, Trigger
from sidkeyd.keystore import KeySnapshot, KeyStore
from sidkeyd.log import get_logger
from sidkeyd.scheduling import CheckSchedule
from sidkeyd.sources import FetchResult, SecretValue, Source, WatchingSource
from sidkeyd.sources.lifecycle import close_sources, start_watchers
from sidkeyd.status import EnvironmentStatus, ErrorStatus, iso
from sidkeyd.threads import DaemonThreadPool

__all__ = ["CheckOutcome", "Health", "KeyManager", "ReportOutcome", "Trigger"]


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class CheckOutcome:
    environment: str
    key_version: str | None
    changed: bool
    error: str | None = None


@dataclass(frozen=True)
class ReportOutcome:
    """What a client that was rejected by Smile ID should do next: sign with ``key_version``."""

    environment: str
    key_version: str | None
    checked: bool  # a backend check ran (or was joined) for this report
    changed: bool
    reason: str  # "checked", "already_rotated" or "rate_limited"


# Smile ID partner ids are digits ("085"). Anything else read from a secret is a config slip
# (``partner_id_field`` naming the key, fields swapped) and must never be echoed: it is served
# in every response.
_PARTNER_ID = re.compile(r"[0-9]{1,32}")


def resolve_partner_id(environment: EnvironmentConfig, value: SecretValue) -> str:
    """The configured partner id and the secret's must agree; one of them must exist.

    Messages name fields and the configured value only, never what the secret holds.
    """
    configured, from_secret = environment.partner_id, value.partner_id
    field = environment.partner_id_field
    if from_secret is not None and (
        from_secret == value.api_key.reveal() or not _PARTNER_ID.fullmatch(from_secret)
    ):
        raise InvalidSecretError(
            f'the secret\'s field {field!r} is not a partner id (digits, such as "085"): '
            "check partner_id_field and api_key_field",
            code="partner_id_invalid",
        )
    if configured is not None and from_secret is not None and configured != from_secret:
        raise InvalidSecretError(
            f"the secret's field {field!r} differs from the configured partner_id {configured!r}",
            code="partner_id_mismatch",
        )
    partner_id = configured if configured is not None else from_secret
    if partner_id is None:
        raise InvalidSecretError(
            "no partner_id: set it in the environment's config or in the secret",
            code="partner_id_missing",
        )
    return partner_id


@dataclass
class _Flight:
    """The check in flight for one environment; ``forced`` ones read in full."""

    task: asyncio.Future[CheckOutcome]
    forced: bool


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
        self._executor = DaemonThreadPool(
            max_workers=min(8, max(2, len(environments))), thread_name_prefix="sidkeyd-fetch"
        )
        self._flights: dict[str, _Flight] = {}
        self._last_report_check: dict[str, float] = {}  # loop time of a report-forced check
        self._timers: dict[tuple[str, str], asyncio.TimerHandle] = {}  # (env, stale|revoke)
        self._background: set[asyncio.Future[CheckOutcome]] = set()
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

    async def _scheduled_check(self, environment: str) -> None:
        # Cancelled at shutdown: APScheduler would print that as a job failure on stderr.
        with contextlib.suppress(asyncio.CancelledError):
            await self.check(environment, Trigger.SCHEDULE)

    async def stop(self, timeout_s: float | None = None) -> None:
        """Stop checking and close the sources, within ``timeout_s`` (shutdown_timeout)."""
        self._schedule.shutdown()
        pending = [flight.task for flight in self._flights.values()]
        pending.extend(self._background)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)
        budget = self._shutdown_timeout_s if timeout_s is None else timeout_s
        await close_sources(self._sources, budget, self._log)

    def check_soon(self, trigger: Trigger, names: list[str] | None = None, **fields: Any) -> None:
        """Start forced checks without waiting for them (signals, watchers)."""
        for name in self._fresh if names is None else names:
            task = asyncio.ensure_future(self.check(name, trigger, force=True, **fields))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def settle(self) -> None:
        """Wait for every check that is running or was started in the background."""
        await asyncio.sleep(0)  # let call_soon_threadsafe callbacks start their checks
        pending = [flight.task for flight in self._flights.values()]
        await asyncio.gather(*pending, *self._background, return_exceptions=True)

    def _notified(self, source_name: str, changed: str) -> None:
        """A watcher says ``changed`` changed: check every environment that holds it."""
        source = self._sources[source_name]
        assert isinstance(source, WatchingSource)
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
        now = asyncio.get_running_loop().time()
        limit = self._fresh[environment].refresh.report_interval.total_seconds()
        flight = self._flights.get(environment)
        joining = flight is not None and flight.forced
        last = self._last_report_check.get(environment, float("-inf"))
        if not joining and now - last < limit:
            version = held.version if held else None
            return ReportOutcome(environment, version, False, False, "rate_limited")
        if not joining:
            self._last_report_check[environment] = now
        outcome = await self.check(
            environment, Trigger.REPORT, force=True, reported_version=key_version, **peer
        )
        return ReportOutcome(environment, outcome.key_version, True, outcome.changed, "checked")

    async def check(
        self, environment: str, trigger: Trigger, *, force: bool = False, **fields: Any
    ) -> CheckOutcome:
        """Check one environment's key now. Concurrent calls share one backend call.

        A forced caller never joins a scheduled check already in flight: that check may have
        read the backend before the reason to force it (a rotation, a restored policy). It
        waits for it, then starts or joins a forced check, shared by every forced caller.
        """
        while force and (running := self._flights.get(environment)) and not running.forced:
            await asyncio.wait([running.task])  # its done callback removes it first
        flight = self._flights.get(environment)
        if flight is None:
            if trigger not in (Trigger.SCHEDULE, Trigger.STARTUP):
                self._log.info("refresh.forced", environment=environment, trigger=trigger, **fields)
            flight = _Flight(
                asyncio.ensure_future(self._check_once(environment, trigger, force)), force
            )
            self._flights[environment] = flight
            flight.task.add_done_callback(lambda _task: self._landed(environment, flight))
        return await asyncio.shield(flight.task)

    def _landed(self, environment: str, flight: _Flight) -> None:
        if self._flights.get(environment) is flight:
            del self._flights[environment]

    async def _check_once(self, name: str, trigger: Trigger, force: bool) -> CheckOutcome:
        env, fresh = self._environments[name], self._fresh[name]
        held = self._store.get(name)
        fresh.attempted(self._now())
        just_read = ""  # a key read by this check: scrubbed from its error, held or not
        try:
            result = await self._fetch(env, None if force or held is None else held.version)
            installed = None
            if isinstance(result, SecretValue):
                just_read = result.api_key.reveal()
                installed = self._install(env, result)
            if installed is None:
                self._log.debug(
                    "key.check", environment=name, trigger=trigger, key_version=result.version
                )
            self._apply(name, fresh.succeeded(self._now(), trigger, installed))
            return CheckOutcome(name, result.version, changed=installed is not None)
        except SourceError as exc:
            exc.scrub([*self._store.secrets(), just_read])
            retry_in_s = self._schedule.retry_after_failure(name, fresh.consecutive_failures + 1)
            current = self._store.get(name)
            self._apply(
                name, fresh.failed(exc, self._now(), trigger, held=current, retry_in_s=retry_in_s)
            )
            version = current.version if current else None
            return CheckOutcome(name, version, changed=False, error=exc.reason)

    async def _fetch(self, env: EnvironmentConfig, held_version: str | None) -> FetchResult:
        """The source's read, in the fetch pool; anything but a SourceError is a source bug."""
        source = self._sources[env.source]
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, source.fetch, env, held_version)
        except SourceError:
            raise
        except Exception as exc:  # a source bug must not stop the schedule
            raise TransientSourceError(
                f"unexpected {type(exc).__name__} in source {source.name!r}", code="source_bug"
            ) from exc

    def _install(self, env: EnvironmentConfig, value: SecretValue) -> Installed | None:
        """Put a fresh read in the store, unless it is the key held already."""
        partner_id = resolve_partner_id(env, value)
        held = self._store.get(env.name)
        if (
            held is not None
            and held.version == value.version
            and held.fingerprint == value.api_key.fingerprint
        ):
            return None
        snapshot = KeySnapshot.create(
            environment=env.name,
            partner_id=partner_id,
            version=value.version,
            api_key=value.api_key,
            loaded_at=self._now(),
            served_by=value.served_by,
        )
        self._store.put(snapshot, self._now())
        return Installed(snapshot, held)

    # -- the freshness timers ------------------------------------------------------------

    def _apply(self, name: str, transition: Transition) -> None:
        """Log a transition's events and set the timers it asks for."""
        for event in transition.events:
            getattr(self._log, event.level)(event.name, **event.fields)
        if transition.cancel_revoke:
            self._cancel_timer(name, "revoke")
        if transition.stale_in_s is not None:
            self._arm_timer(name, "stale", transition.stale_in_s, self._went_stale)
        if transition.revoke_in_s is not None:
            self._arm_timer(name, "revoke", transition.revoke_in_s, self._revoke)

    def _arm_timer(self, name: str, kind: str, delay_s: float, fire: Callable[[str], None]) -> None:
        self._cancel_timer(name, kind)
        loop = asyncio.get_running_loop()
        self._timers[name, kind] = loop.call_later(delay_s, self._fire, name, kind, fire)

    def _cancel_timer(self, name: str, kind: str) -> None:
        timer = self._timers.pop((name, kind), None)
        if timer is not None:
            timer.cancel()

    def _fire(self, name: str, kind: str, fire: Callable[[str], None]) -> None:
        self._timers.pop((name, kind), None)
        fire(name)

    def _went_stale(self, name: str) -> None:
        self._apply(name, self._fresh[name].went_stale())

    def _revoke(self, name: str) -> None:
        self._apply(name, self._fresh[name].revoked(self._store.drop(name)))

    # -- reporting -----------------------------------------------------------------------

    def health(self, environment: str) -> tuple[Health, str | None]:
        return self._fresh[environment].health(self._store.get(environment) is not None)

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
