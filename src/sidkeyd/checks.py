"""Running checks: one backend call per environment at a time, its result applied.

``CheckRunner.check()`` is single-flight per environment (concurrent callers share one call;
a forced caller never joins a cheap scheduled one), reads the source in the fetch pool off the
event loop, installs a new key in the store, and applies the freshness transition: its audit
events, and the stale and revoke timers it asks for. It owns the flights, the pool and the
timers; the freshness rules are ``freshness.Freshness``'s, the schedule ``CheckSchedule``'s.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sidkeyd.config import EnvironmentConfig
from sidkeyd.errors import InvalidSecretError, SourceError, TransientSourceError
from sidkeyd.freshness import Freshness, Installed, Transition, Trigger
from sidkeyd.keystore import KeySnapshot, KeyStore
from sidkeyd.log import get_logger
from sidkeyd.presign import LiveCalls, RemoteSigning
from sidkeyd.scheduling import CheckSchedule
from sidkeyd.sources import FetchResult, RemoteKey, SecretValue, Source
from sidkeyd.threads import DaemonThreadPool


@dataclass(frozen=True)
class CheckOutcome:
    environment: str
    key_version: str | None
    changed: bool
    error: str | None = None


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


def check_key_version(value: SecretValue) -> None:
    """A version that holds the key is refused: it is served in every answer, the audit trail
    and status. Whoever writes an AWS secret chooses its VersionId (ClientRequestToken).

    The message names neither.
    """
    key = value.api_key.reveal()
    if key and key in value.version:
        raise InvalidSecretError(
            "the secret's version id contains the key (set by whoever wrote the secret, e.g. "
            "an AWS ClientRequestToken): write the secret again with another version id",
            code="key_version_invalid",
        )


_SUPERSEDED = "superseded by a config reload: not applied"


@dataclass
class _Flight:
    """The check in flight for one environment; ``forced`` ones read in full."""

    task: asyncio.Future[CheckOutcome]
    forced: bool


class CheckRunner:
    def __init__(
        self,
        environments: Mapping[str, EnvironmentConfig],
        sources: Mapping[str, Source],
        store: KeyStore,
        freshness: Mapping[str, Freshness],
        schedule: CheckSchedule,
        now: Callable[[], datetime],
    ) -> None:
        self._environments = environments
        self._sources = sources
        self._store = store
        self._fresh = freshness
        self._schedule = schedule
        self._now = now
        self._executor = DaemonThreadPool(
            max_workers=min(8, max(2, len(environments))), thread_name_prefix="sidkeyd-fetch"
        )
        # Remote signers' calls (presign refills, caller timestamps, verifies): never queued
        # behind a check, nor a check behind them.
        self._sign_pool = DaemonThreadPool(max_workers=8, thread_name_prefix="sidkeyd-sign")
        # Refills in a pool of their own: a flood of live calls never delays one.
        self._refill_pool = DaemonThreadPool(max_workers=4, thread_name_prefix="sidkeyd-refill")
        self._live_calls: dict[str, LiveCalls] = {}  # per environment, shared by its versions
        self._flights: dict[str, _Flight] = {}
        self._epochs: dict[str, int] = {}  # bumped when a reload renews or drops an environment
        self._timers: dict[tuple[str, str], asyncio.TimerHandle] = {}  # (env, stale|revoke)
        self._log = get_logger()
        # (environment, trigger, "ok" | "changed" | error code, seconds): the metrics.
        self.observe: Callable[[str, str, str, float], None] = lambda *_: None

    def forced_in_flight(self, environment: str) -> bool:
        """A forced check is running for ``environment``: a report may join it."""
        flight = self._flights.get(environment)
        return flight is not None and flight.forced

    def in_flight(self) -> list[asyncio.Future[CheckOutcome]]:
        return [flight.task for flight in self._flights.values()]

    def reconfigure(
        self,
        environments: Mapping[str, EnvironmentConfig],
        sources: Mapping[str, Source],
        freshness: Mapping[str, Freshness],
        renewed: list[str],
    ) -> None:
        """A reload's new settings; ``renewed`` (changed or removed) environments forget their
        checks in flight and timers, so what a check of the old settings reads is never held."""
        self._environments, self._sources, self._fresh = environments, sources, freshness
        for name in renewed:
            self._epochs[name] = self._epochs.get(name, 0) + 1
            self._flights.pop(name, None)  # it lands unapplied: see _superseded
            for kind in ("stale", "revoke"):
                self._cancel_timer(name, kind)
            if name not in environments:  # removed: its calls still out hold their own bound
                self._live_calls.pop(name, None)

    def _superseded(self, name: str, epoch: int) -> bool:
        return self._epochs.get(name, 0) != epoch or name not in self._environments

    async def stop(self) -> None:
        """Cancel the checks and timers; a backend call in a worker is abandoned."""
        pending = self.in_flight()
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for name in self._environments:
            self._retire(self._store.get(name))
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._sign_pool.shutdown(wait=False, cancel_futures=True)
        self._refill_pool.shutdown(wait=False, cancel_futures=True)

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
        if environment not in self._environments:  # removed by a reload while it waited
            return CheckOutcome(environment, None, changed=False, error=_SUPERSEDED)
        flight = self._flights.get(environment)
        if flight is None:
            if force:
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
        epoch = self._epochs.get(name, 0)
        held = self._store.get(name)
        fresh.attempted(self._now())
        started = time.monotonic()
        just_read = ""  # a key read by this check: scrubbed from its error, held or not
        try:
            result = await self._fetch(env, None if force or held is None else held.version)
            if self._superseded(name, epoch):
                return CheckOutcome(name, None, changed=False, error=_SUPERSEDED)
            installed = None
            if isinstance(result, SecretValue):
                just_read = result.api_key.reveal()
                installed = self._install(env, result)
            elif isinstance(result, RemoteKey):
                installed = self._install_remote(env, result)
            if installed is None:
                self._log.debug(
                    "key.check", environment=name, trigger=trigger, key_version=result.version
                )
            self._apply(name, fresh.succeeded(self._now(), trigger, installed))
            result_name = "ok" if installed is None else "changed"
            self.observe(name, trigger, result_name, time.monotonic() - started)
            return CheckOutcome(name, result.version, changed=installed is not None)
        except SourceError as exc:
            exc.scrub([*self._store.secrets(), just_read])
            if self._superseded(name, epoch):
                return CheckOutcome(name, None, changed=False, error=_SUPERSEDED)
            retry_in_s = self._schedule.retry_after_failure(name, fresh.consecutive_failures + 1)
            current = self._store.get(name)
            self._apply(
                name, fresh.failed(exc, self._now(), trigger, held=current, retry_in_s=retry_in_s)
            )
            version = current.version if current else None
            self.observe(name, trigger, exc.code, time.monotonic() - started)
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
        check_key_version(value)
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

    def _install_remote(self, env: EnvironmentConfig, key: RemoteKey) -> Installed | None:
        """A new remote key version: a snapshot with an empty table; the old table dropped."""
        held = self._store.get(env.name)
        if held is not None and held.remote is not None and held.version == key.version:
            return None
        assert env.partner_id is not None  # the loader requires it with a remote signer
        remote = RemoteSigning(
            env.name,
            env.partner_id,
            key.signer,
            env.presign,
            self._sign_pool,
            live_calls=self._live_calls_of(env),
            refill_pool=self._refill_pool,
        )
        snapshot = KeySnapshot.for_remote(
            environment=env.name,
            partner_id=env.partner_id,
            remote=remote,
            loaded_at=self._now(),
            served_by=key.served_by,
        )
        self._store.put(snapshot, self._now())
        self._retire(held)
        remote.start()
        return Installed(snapshot, held)

    def _live_calls_of(self, env: EnvironmentConfig) -> LiveCalls:
        """The environment's bound, kept across versions while its limit is unchanged."""
        live = self._live_calls.get(env.name)
        if live is None or live.limit != env.presign.live_calls_max:
            live = self._live_calls[env.name] = LiveCalls(env.presign.live_calls_max)
        return live

    @staticmethod
    def _retire(snapshot: KeySnapshot | None) -> None:
        if snapshot is not None and snapshot.remote is not None:
            snapshot.remote.retire()

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
        dropped = self._store.drop(name)
        self._retire(dropped)
        self._apply(name, self._fresh[name].revoked(dropped))
