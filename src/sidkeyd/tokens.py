"""Smile ID V3 tokens, brokered: services get a short-lived token, never the key.

``TokenBroker.token(environment)`` answers from the token held in the key store while it is
fresh; otherwise it fetches one from Smile ID (``smileid_v3.fetch_token``, off the loop) with
the key held, single-flight per environment. Every fetched token is refreshed in the background
at two thirds of its life, so a request almost never waits on Smile ID; while a refresh fails,
the held token is served until shortly before it expires. A token is dropped when its key is
replaced (the store does that) and when a client reports it refused (at most once per
``report_interval``). A token without a decodable ``exp`` is handed to one request only.

A refused key (401/403 from ``/v3/token``) may mean a rotation this host has not seen: the key
is checked now (trigger ``token``) and the token asked for once more with the key held after it.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from sidkeyd.backoff import Backoff
from sidkeyd.config import EnvironmentConfig
from sidkeyd.errors import SmileIdError
from sidkeyd.freshness import Trigger
from sidkeyd.held import HeldSecret
from sidkeyd.keystore import HeldToken, KeySnapshot, KeyStore
from sidkeyd.log import get_logger
from sidkeyd.smileid_v3 import fetch_token
from sidkeyd.status import ErrorStatus, iso
from sidkeyd.threads import DaemonThreadPool

# A held token is served until this long before its expiry, even while refreshes fail; the
# SDKs themselves stop using a token 60 s before ``exp``.
_SERVE_MARGIN_S = 5.0
_RETRY = Backoff(1.0, 60.0)

Fetch = Callable[[Any, str, str], tuple[str, int | None]]


class KeyEngine(Protocol):
    """What the broker needs of the rotation engine."""

    def signing_key(self, environment: str) -> KeySnapshot: ...

    async def budgeted_check(self, environment: str, trigger: Trigger, **fields: Any) -> bool: ...


@dataclass
class _State:
    flight: asyncio.Future[HeldToken] | None = None
    refresh_timer: asyncio.TimerHandle | None = None
    failures: int = 0
    last_error: SmileIdError | None = None
    last_error_at: float | None = None
    last_drop_at: float = float("-inf")  # loop time of the last report-driven drop
    quiet_until: float = float("-inf")  # after a failure: no new call before this (clock)
    unclaimed: HeldToken | None = None  # a fetched single-use token no waiter has taken


class TokenBroker:
    def __init__(
        self,
        environments: Mapping[str, EnvironmentConfig],
        engine: KeyEngine,
        store: KeyStore,
        *,
        fetch: Fetch = fetch_token,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._environments = {n: e for n, e in environments.items() if e.smileid is not None}
        self._engine = engine
        self._store = store
        self._fetch_blocking = fetch
        self._clock = clock
        self._states = {name: _State() for name in self._environments}
        self._pool = DaemonThreadPool(2, "sidkeyd-token")
        self._rng = random.Random()
        self._log = get_logger()

    def __contains__(self, environment: object) -> bool:
        return environment in self._environments

    async def token(self, environment: str) -> HeldToken:
        """A token for ``environment`` minted with the key held now."""
        while True:
            key = self._engine.signing_key(environment)  # refuses as signing would
            held = self._store.token(environment)
            state = self._states[environment]
            if held is not None and held.key_version == key.version:
                now = self._clock()
                if held.expires_at is None:  # no expiry: this request's, and nobody else's
                    self._store.drop_token(environment)
                    return held
                if now < held.expires_at - _SERVE_MARGIN_S:
                    if now >= _refresh_at(held):
                        self._refresh_soon(environment, "ahead")
                    return held
            if state.last_error is not None and self._clock() < state.quiet_until:
                raise state.last_error  # backing off: the last answer, without a new call
            fetched = await self._fetch(environment, "request")
            if fetched.key_version != self._engine.signing_key(environment).version:
                continue  # the key rotated while it was being minted
            if fetched.expires_at is not None:
                return fetched
            state = self._states[environment]
            if state.unclaimed is fetched:  # single use: the first waiter takes it
                state.unclaimed = None
                return fetched
            # Another waiter's single-use token: go round for one of our own.

    def refused(self, environment: str, **peer: Any) -> str:
        """A client says Smile ID refused the token: drop it (rate-limited per environment)."""
        state = self._states[environment]
        now = asyncio.get_running_loop().time()
        limit = self._environments[environment].refresh.report_interval.total_seconds()
        if now - state.last_drop_at < limit:
            return "rate_limited"
        state.last_drop_at = now
        dropped = self._store.drop_token(environment)
        self._log.warning(
            "token.rejection_reported",
            environment=environment,
            key_version=dropped.key_version if dropped else None,
            **peer,
        )
        return "dropped"

    def status(self, environment: str) -> tuple[str | None, ErrorStatus | None]:
        """The held token's expiry and the last fetch error (reason for admins)."""
        state = self._states.get(environment)
        if state is None:
            return None, None
        held = self._store.token(environment)
        expires = iso_epoch(held.expires_at) if held and held.expires_at else None
        error = state.last_error
        if error is None:
            return expires, None
        return expires, ErrorStatus(
            "token", error.code, error.message, iso_epoch(state.last_error_at)
        )

    def failing(self, environment: str) -> bool:
        state = self._states.get(environment)
        return state is not None and state.last_error is not None

    def reconfigure(self, environments: Mapping[str, EnvironmentConfig]) -> None:
        """A reload: environments gone or with new V3 settings lose their token and state."""
        wanted = {n: e for n, e in environments.items() if e.smileid is not None}
        for name in list(self._states):
            if name not in wanted or wanted[name].smileid != self._environments[name].smileid:
                state = self._states.pop(name)
                if state.refresh_timer is not None:
                    state.refresh_timer.cancel()
                self._store.drop_token(name)
        self._environments = wanted
        for name in wanted:
            self._states.setdefault(name, _State())

    def stop(self) -> None:
        for state in self._states.values():
            if state.refresh_timer is not None:
                state.refresh_timer.cancel()
            if state.flight is not None:
                state.flight.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- fetching ------------------------------------------------------------------------

    def _fetch(self, environment: str, trigger: str) -> asyncio.Future[HeldToken]:
        """The fetch in flight for ``environment``, or a new one: one call for every waiter."""
        state = self._states[environment]
        if state.flight is None:
            flight = asyncio.ensure_future(self._fetch_once(environment, trigger))
            state.flight = flight

            def landed(_: object) -> None:
                if state.flight is flight:
                    state.flight = None

            flight.add_done_callback(landed)
        return asyncio.shield(state.flight)

    async def _fetch_once(self, environment: str, trigger: str) -> HeldToken:
        state = self._states[environment]
        try:
            held = await self._mint(environment, trigger)
        except SmileIdError as exc:
            if self._states.get(environment) is not state:
                raise  # a reload replaced these settings: nothing to retry
            state.failures += 1
            state.last_error, state.last_error_at = exc, self._clock()
            state.quiet_until = self._clock() + _RETRY.delay(state.failures, self._rng)
            self._log.warning(
                "token.refresh_failed",
                environment=environment,
                trigger=trigger,
                error_code=exc.code,
                reason=exc.message,
                failures=state.failures,
            )
            self._retry_later(environment)
            raise
        if self._states.get(environment) is not state:
            return held  # minted with settings a reload replaced: for this waiter only
        state.failures, state.last_error = 0, None
        self._log.info(
            "token.refreshed",
            environment=environment,
            trigger=trigger,
            key_version=held.key_version,
            expires_at=iso_epoch(held.expires_at),
        )
        if held.expires_at is None:
            state.unclaimed = held
        elif self._store.put_token(environment, held):
            self._schedule_refresh(environment, held)
        return held

    async def _mint(self, environment: str, trigger: str) -> HeldToken:
        try:
            return await self._ask(environment, self._engine.signing_key(environment))
        except SmileIdError as exc:
            # The key was refused: perhaps rotated. Check it now, under the report budget (a key
            # refused for good must not make every request read the backend), then ask again.
            if not exc.refused or not await self._engine.budgeted_check(
                environment, Trigger.TOKEN, token=trigger
            ):
                raise
        return await self._ask(environment, self._engine.signing_key(environment))

    async def _ask(self, environment: str, key: KeySnapshot) -> HeldToken:
        config = self._environments[environment].smileid
        loop = asyncio.get_running_loop()
        issued = self._clock()
        # The loader refuses smileid with a remote signer: only a local key mints tokens.
        assert config is not None
        assert key.api_key is not None
        call = loop.run_in_executor(
            self._pool, self._fetch_blocking, config, key.partner_id, key.api_key.reveal()
        )
        try:
            # One deadline for the whole call: the socket's timeout bounds each read only, and
            # an endpoint answering a byte at a time would hold the flight for hours.
            text, exp = await asyncio.wait_for(call, config.timeout.total_seconds())
        except TimeoutError:
            raise SmileIdError(
                "smileid_timeout", "Smile ID did not answer the token request in time", 504
            ) from None
        except SmileIdError:
            raise
        except Exception as exc:  # an answer the parser did not foresee is still an answer
            raise SmileIdError(
                "smileid_bad_response", f"Smile ID's answer was unusable ({type(exc).__name__})"
            ) from None
        if exp is not None and exp <= issued + _SERVE_MARGIN_S:
            raise SmileIdError("smileid_bad_response", "Smile ID answered an expired token")
        return HeldToken(
            HeldSecret(text), key.version, issued, float(exp) if exp is not None else None
        )

    # -- refreshing ahead ----------------------------------------------------------------

    def _schedule_refresh(self, environment: str, held: HeldToken) -> None:
        delay = max(0.0, _refresh_at(held) - self._clock())
        self._set_timer(environment, delay)

    def _retry_later(self, environment: str) -> None:
        """While a held token is still valid, try again after the backoff (before it expires)."""
        held = self._store.token(environment)
        if held is None or held.expires_at is None:
            return
        left = held.expires_at - _SERVE_MARGIN_S - self._clock()
        if left <= 0:
            return
        delay = min(_RETRY.delay(self._states[environment].failures, self._rng), left / 2)
        self._set_timer(environment, delay)

    def _set_timer(self, environment: str, delay: float) -> None:
        state = self._states[environment]
        if state.refresh_timer is not None:
            state.refresh_timer.cancel()
        loop = asyncio.get_running_loop()
        state.refresh_timer = loop.call_later(delay, self._refresh_soon, environment, "ahead")

    def _refresh_soon(self, environment: str, trigger: str) -> None:
        state = self._states[environment]
        state.refresh_timer = None
        if state.flight is not None:
            return
        self._fetch(environment, trigger).add_done_callback(_consume)


def _refresh_at(held: HeldToken) -> float:
    """Two thirds into the token's life (as sidkeyd renews its Vault token)."""
    assert held.expires_at is not None
    return held.issued_at + (held.expires_at - held.issued_at) * 2 / 3


def _consume(future: asyncio.Future[HeldToken]) -> None:
    if not future.cancelled():
        future.exception()  # a background refresh's failure is logged, not raised


def iso_epoch(epoch: float | None) -> str | None:
    return iso(datetime.fromtimestamp(epoch, UTC)) if epoch is not None else None
