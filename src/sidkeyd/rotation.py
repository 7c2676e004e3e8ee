"""The rotation engine: when to check each environment's key, and what a check's result means.

Everything about key freshness lives here: the APScheduler schedule (interval, jitter, a stable
per-host offset), exponential backoff with full jitter, single-flight checks, and the rules for
serving through a backend outage (``max_stale``) or a lost access (``revoke_grace``). The sign
path asks ``signing_key()``, which does no I/O and no clock arithmetic: timers flip the state.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import re
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from sidkeyd.config import Config, EnvironmentConfig
from sidkeyd.errors import (
    AccessLostError,
    InvalidSecretError,
    KeyUnavailableError,
    SourceError,
    TransientSourceError,
)
from sidkeyd.keystore import KeySnapshot, KeyStore
from sidkeyd.log import get_logger
from sidkeyd.sources import SecretValue, Source, Unchanged, WatchingSource
from sidkeyd.threads import DaemonThreadPool


class Trigger(StrEnum):
    STARTUP = "startup"
    SCHEDULE = "schedule"
    ADMIN = "admin"
    SIGNAL = "signal"
    REPORT = "report"
    NOTIFY = "notify"


class Health(StrEnum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"  # serving, but the last check failed
    UNAVAILABLE = "unavailable"  # refusing to sign


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class EnvironmentState:
    """Mutable bookkeeping for one environment; owned by the event loop thread."""

    config: EnvironmentConfig
    source: Source
    last_attempt_at: datetime | None = None
    last_success_at: datetime | None = None
    last_error: SourceError | None = None
    last_error_at: datetime | None = None
    consecutive_failures: int = 0
    access_lost_at: datetime | None = None
    refusal: KeyUnavailableError | None = None  # set by the stale and revoke timers
    last_forced_at: float = float("-inf")  # loop time of the last report-forced check
    inflight: asyncio.Task[CheckOutcome] | None = None
    inflight_forced: bool = False  # the check in flight reads in full (not a cheap check)
    stale_timer: asyncio.TimerHandle | None = None
    revoke_timer: asyncio.TimerHandle | None = None

    @property
    def name(self) -> str:
        return self.config.name


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


def backoff_delay(failures: int, low: timedelta, high: timedelta, rng: random.Random) -> float:
    """Exponential backoff with full jitter, bounded to [low, high] seconds."""
    ceiling = min(high.total_seconds(), low.total_seconds() * 2 ** max(failures - 1, 0))
    return rng.uniform(low.total_seconds(), max(ceiling, low.total_seconds()))


def host_offset(host: str, environment: str, interval: timedelta) -> timedelta:
    """A stable fraction of the interval per host and environment, to spread a fleet's checks."""
    digest = hashlib.sha256(f"{host}\x00{environment}".encode()).digest()
    fraction = int.from_bytes(digest[:4], "big") / 2**32
    return interval * fraction


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


class KeyManager:
    """Holds the key store's contents current; the server asks it for keys and forced checks."""

    def __init__(
        self,
        config: Config,
        sources: Mapping[str, Source],
        store: KeyStore,
        *,
        now: Callable[[], datetime] = utcnow,
        rng: random.Random | None = None,
        hostname: str | None = None,
    ) -> None:
        self._config = config
        self._store = store
        self._sources = sources
        self._now = now
        self._rng = rng or random.Random()
        self._hostname = hostname or socket.gethostname()
        self._states = {
            name: EnvironmentState(env, sources[env.source])
            for name, env in config.environments.items()
        }
        self._executor = DaemonThreadPool(
            max_workers=min(8, max(2, len(self._states))), thread_name_prefix="sidkeyd-fetch"
        )
        self._scheduler: AsyncIOScheduler | None = None
        self._background: set[asyncio.Future[CheckOutcome]] = set()
        self._log = get_logger()

    # -- the sign path -------------------------------------------------------------------

    def signing_key(self, environment: str) -> KeySnapshot:
        """The key to sign with now, or KeyUnavailableError. No I/O."""
        state = self._states[environment]
        if state.refusal is not None:
            raise state.refusal
        snapshot = self._store.get(environment)
        if snapshot is None:
            raise KeyUnavailableError(
                "no_key", f"no key loaded yet for {environment!r}: {_reason(state)}"
            )
        return snapshot

    def verification_keys(self, environment: str) -> list[KeySnapshot]:
        """The current key, then the previous one while ``verify_previous_for`` lasts."""
        keys = [self.signing_key(environment)]
        retired = self._store.previous(environment)
        window = self._states[environment].config.refresh.verify_previous_for
        if retired is not None and self._now() - retired.retired_at < window:
            keys.append(retired.snapshot)
        return keys

    def __contains__(self, environment: str) -> bool:
        return environment in self._states

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Load every environment once, then start the schedule."""
        await asyncio.gather(*(self.check(name, Trigger.STARTUP) for name in self._states))
        self._scheduler = AsyncIOScheduler(timezone=UTC)
        now = self._now()
        for name, state in self._states.items():
            interval = state.config.refresh.interval
            self._scheduler.add_job(
                self._scheduled_check,
                IntervalTrigger(
                    seconds=interval.total_seconds(),
                    jitter=interval.total_seconds() * state.config.refresh.jitter or None,
                    start_date=now + host_offset(self._hostname, name, interval),
                    timezone=UTC,
                ),
                args=(name,),
                id=name,
                coalesce=True,
                max_instances=1,
                misfire_grace_time=max(1, int(interval.total_seconds())),
            )
            # A failed startup load retries on the backoff schedule, not a whole interval later.
            if state.consecutive_failures:
                self._schedule_retry(state)
        self._scheduler.start()
        self._start_watchers()

    async def _scheduled_check(self, environment: str) -> None:
        # Cancelled at shutdown: APScheduler would print that as a job failure on stderr.
        with contextlib.suppress(asyncio.CancelledError):
            await self.check(environment, Trigger.SCHEDULE)

    async def stop(self, timeout_s: float | None = None) -> None:
        """Stop checking and close the sources, within ``timeout_s`` (shutdown_timeout)."""
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        pending: list[asyncio.Future[CheckOutcome]] = [
            s.inflight for s in self._states.values() if s.inflight is not None
        ]
        pending.extend(self._background)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for state in self._states.values():
            for timer in (state.stale_timer, state.revoke_timer):
                if timer is not None:
                    timer.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
        if timeout_s is None:
            timeout_s = self._config.server.shutdown_timeout.total_seconds()
        await self._close_sources(timeout_s)

    async def _close_sources(self, timeout_s: float) -> None:
        """Close every source in its own daemon thread: a backend stuck in a call (a hung
        credential helper, a black-holed Vault) must not hold the shutdown past its budget."""
        loop = asyncio.get_running_loop()
        waiting: dict[asyncio.Future[None], str] = {}
        for name, source in self._sources.items():
            done: asyncio.Future[None] = loop.create_future()

            def close(source: Source = source, done: asyncio.Future[None] = done) -> None:
                try:
                    source.close()
                finally:
                    with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
                        loop.call_soon_threadsafe(_resolve, done)

            threading.Thread(target=close, name=f"sidkeyd-close-{name}", daemon=True).start()
            waiting[done] = name
        if not waiting:
            return
        _, pending = await asyncio.wait(waiting, timeout=timeout_s)
        if pending:
            self._log.warning("source.close_timeout", sources=sorted(waiting[f] for f in pending))

    def _start_watchers(self) -> None:
        loop = asyncio.get_running_loop()
        for name, source in self._sources.items():
            if not isinstance(source, WatchingSource):
                continue

            def on_change(changed: str, source_name: str = name) -> None:
                loop.call_soon_threadsafe(self._notified, source_name, changed)

            source.watch(on_change)

    def check_soon(self, trigger: Trigger, names: list[str] | None = None, **fields: Any) -> None:
        """Start forced checks without waiting for them (signals, watchers)."""
        for name in self._states if names is None else names:
            task = asyncio.ensure_future(self.check(name, trigger, force=True, **fields))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def settle(self) -> None:
        """Wait for every check that is running or was started in the background."""
        await asyncio.sleep(0)  # let call_soon_threadsafe callbacks start their checks
        pending = [s.inflight for s in self._states.values() if s.inflight is not None]
        await asyncio.gather(*pending, *self._background, return_exceptions=True)

    def _notified(self, source_name: str, changed: str) -> None:
        """A watcher says ``changed`` changed: check every environment that holds it."""
        source = self._sources[source_name]
        assert isinstance(source, WatchingSource)
        names = [
            state.name
            for state in self._states.values()
            if state.config.source == source_name and source.matches(state.config.secret, changed)
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
        state = self._states[environment]
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
        limit = state.config.refresh.report_interval.total_seconds()
        joining = state.inflight is not None and state.inflight_forced
        if not joining and now - state.last_forced_at < limit:
            version = held.version if held else None
            return ReportOutcome(environment, version, False, False, "rate_limited")
        if not joining:
            state.last_forced_at = now
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
        state = self._states[environment]
        while force and state.inflight is not None and not state.inflight_forced:
            await asyncio.wait([state.inflight])  # its done callback clears ``inflight`` first
        if state.inflight is None:
            if trigger not in (Trigger.SCHEDULE, Trigger.STARTUP):
                self._log.info("refresh.forced", environment=environment, trigger=trigger, **fields)
            state.inflight = asyncio.ensure_future(self._check_once(state, trigger, force))
            state.inflight_forced = force
            state.inflight.add_done_callback(lambda _task: setattr(state, "inflight", None))
        return await asyncio.shield(state.inflight)

    async def _check_once(
        self, state: EnvironmentState, trigger: Trigger, force: bool
    ) -> CheckOutcome:
        held = self._store.get(state.name)
        held_version = None if force or held is None else held.version
        state.last_attempt_at = self._now()
        loop = asyncio.get_running_loop()
        just_read = ""  # a key read by this check: scrubbed from its error, held or not
        try:
            try:
                result = await loop.run_in_executor(
                    self._executor, state.source.fetch, state.config, held_version
                )
            except SourceError:
                raise
            except Exception as exc:  # a source bug must not stop the schedule
                raise TransientSourceError(
                    f"unexpected {type(exc).__name__} in source {state.source.name!r}",
                    code="source_bug",
                ) from exc
            if isinstance(result, Unchanged):
                self._on_success(state, trigger, changed=False)
                self._log.debug(
                    "key.check", environment=state.name, trigger=trigger, key_version=result.version
                )
                return CheckOutcome(state.name, result.version, changed=False)
            just_read = result.api_key.reveal()
            changed = self._install(state, result, trigger)
            if not changed:
                self._log.debug(
                    "key.check", environment=state.name, trigger=trigger, key_version=result.version
                )
            self._on_success(state, trigger, changed=changed)
            return CheckOutcome(state.name, result.version, changed=changed)
        except SourceError as exc:
            exc.scrub([*self._store.secrets(), just_read])
            self._on_failure(state, exc, trigger)
            current = self._store.get(state.name)
            return CheckOutcome(
                state.name, current.version if current else None, changed=False, error=exc.reason
            )

    def _install(self, state: EnvironmentState, value: SecretValue, trigger: Trigger) -> bool:
        partner_id = resolve_partner_id(state.config, value)
        held = self._store.get(state.name)
        if (
            held is not None
            and held.version == value.version
            and held.fingerprint == (value.api_key.fingerprint)
        ):
            return False
        snapshot = KeySnapshot.create(
            environment=state.name,
            partner_id=partner_id,
            version=value.version,
            api_key=value.api_key,
            loaded_at=self._now(),
            served_by=value.served_by,
        )
        self._store.put(snapshot, self._now())
        common = {
            "environment": state.name,
            "source": state.source.name,
            "trigger": trigger,
            "served_by": value.served_by,
        }
        if held is None:
            event = "key.restored" if state.refusal is not None else "key.loaded"
            self._log.info(
                event,
                **common,
                key_version=snapshot.version,
                fingerprint=snapshot.fingerprint,
                partner_id=partner_id,
            )
        else:
            self._log.info(
                "key.rotated",
                **common,
                old_version=held.version,
                old_fingerprint=held.fingerprint,
                new_version=snapshot.version,
                new_fingerprint=snapshot.fingerprint,
            )
        return True

    def _on_success(self, state: EnvironmentState, trigger: Trigger, *, changed: bool) -> None:
        if state.consecutive_failures:
            self._log.info(
                "key.refresh_recovered",
                environment=state.name,
                trigger=trigger,
                failures=state.consecutive_failures,
            )
        if state.refusal is not None:
            if not changed:  # a stale key confirmed current again: serving resumes
                self._log.info("key.restored", environment=state.name, trigger=trigger)
            state.refusal = None
        state.last_success_at = self._now()
        state.last_error = None
        state.consecutive_failures = 0
        state.access_lost_at = None
        if state.revoke_timer is not None:
            state.revoke_timer.cancel()
            state.revoke_timer = None
        if state.stale_timer is not None:
            state.stale_timer.cancel()
        state.stale_timer = asyncio.get_running_loop().call_later(
            state.config.refresh.max_stale.total_seconds(), self._mark_stale, state
        )

    def _on_failure(self, state: EnvironmentState, exc: SourceError, trigger: Trigger) -> None:
        state.last_error = exc
        state.last_error_at = self._now()
        state.consecutive_failures += 1
        held = self._store.get(state.name)
        retry_in = self._schedule_retry(state) if self._scheduler is not None else None
        log = self._log.error if exc.kind == "permanent" else self._log.warning
        log(
            "key.refresh_failed",
            environment=state.name,
            source=state.source.name,
            trigger=trigger,
            error_kind=exc.kind,
            error_code=exc.code,
            reason=exc.reason,
            consecutive_failures=state.consecutive_failures,
            retry_in_s=retry_in,
            serving_version=held.version if held and state.refusal is None else None,
        )
        if isinstance(exc, AccessLostError) and state.access_lost_at is None:
            state.access_lost_at = self._now()
            if held is not None:
                state.revoke_timer = asyncio.get_running_loop().call_later(
                    state.config.refresh.revoke_grace.total_seconds(), self._revoke, state
                )

    def _schedule_retry(self, state: EnvironmentState) -> float:
        refresh = state.config.refresh
        delay = backoff_delay(
            state.consecutive_failures, refresh.backoff_min, refresh.backoff_max, self._rng
        )
        delay = min(delay, refresh.interval.total_seconds())
        assert self._scheduler is not None
        self._scheduler.modify_job(state.name, next_run_time=self._now() + timedelta(seconds=delay))
        return round(delay, 3)

    def _mark_stale(self, state: EnvironmentState) -> None:
        state.stale_timer = None
        if state.refusal is None:
            age = state.config.refresh.max_stale.total_seconds()
            state.refusal = KeyUnavailableError(
                "key_stale", f"no successful check of {state.name!r} for over {age:g}s"
            )
            self._log.error("key.stale", environment=state.name, reason=_reason(state))

    def _revoke(self, state: EnvironmentState) -> None:
        state.revoke_timer = None
        dropped = self._store.drop(state.name)
        state.refusal = KeyUnavailableError(
            "key_revoked", f"access to the key of {state.name!r} was lost: {_reason(state)}"
        )
        self._log.error(
            "key.revoked",
            environment=state.name,
            key_version=dropped.version if dropped else None,
            reason=_reason(state),
        )

    # -- reporting -----------------------------------------------------------------------

    def states(self) -> Mapping[str, EnvironmentState]:
        return self._states

    def next_check_at(self, environment: str) -> datetime | None:
        if self._scheduler is None:
            return None
        job = self._scheduler.get_job(environment)
        return job.next_run_time if job is not None else None

    def health(self, environment: str) -> tuple[Health, str | None]:
        state = self._states[environment]
        if state.refusal is not None:
            return Health.UNAVAILABLE, state.refusal.message
        if self._store.get(environment) is None:
            return Health.UNAVAILABLE, f"no key loaded: {_reason(state)}"
        if state.last_error is not None:
            return Health.DEGRADED, f"serving the last good key; {_reason(state)}"
        return Health.HEALTHY, None


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _reason(state: EnvironmentState) -> str:
    """Why an environment is not healthy, from codes only: shown to every peer (health, 503s).

    The backend's own words (``SourceError.reason``) go only to admins and the log.
    """
    if state.last_error is None:
        return "no check has completed yet"
    error = state.last_error
    return f"last check failed ({error.kind}: {error.code})"
