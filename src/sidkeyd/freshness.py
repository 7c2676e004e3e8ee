"""One environment's key freshness as a state machine: pure, no event loop, no I/O.

The engine (``rotation.KeyManager``) calls a transition when something happened; each one updates
the state and returns a ``Transition``: the audit events to log, in order, and what to do with
the environment's two timers. The rules, all here:

- ``succeeded``: the failure count resets, a refusal (stale or revoked) lifts, the stale timer
  restarts at ``max_stale`` and the revoke timer is cancelled. Which key event is logged
  (``key.loaded``, ``key.restored``, ``key.rotated``) follows from what was installed and
  whether the environment was refusing, in one place.
- ``failed``: counted; the first lost access (``AccessLostError``) while a key is held starts
  the ``revoke_grace`` timer. The key is kept.
- ``went_stale`` (the stale timer fired): refuse with ``key_stale`` unless already refusing.
- ``revoked`` (the revoke timer fired): the engine dropped the key; refuse with ``key_revoked``.

Reasons shown to every peer (``health``, refusals) are built from error kinds and codes only;
the backend's own words stay in ``last_error.reason`` for admins and the log.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from sidkeyd.config import RefreshConfig
from sidkeyd.errors import AccessLostError, KeyUnavailableError, SourceError
from sidkeyd.keystore import KeySnapshot


class Trigger(StrEnum):
    STARTUP = "startup"
    SCHEDULE = "schedule"
    ADMIN = "admin"
    SIGNAL = "signal"  # SIGHUP: a config reload
    RELOAD = "reload"  # POST /v1/reload (sidkeyd reload)
    REPORT = "report"
    VERIFY = "verify"  # a signature to verify matched no key held
    TOKEN = "token"  # Smile ID refused the key for a V3 token
    NOTIFY = "notify"


class Health(StrEnum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"  # serving, but the last check failed
    UNAVAILABLE = "unavailable"  # refusing to sign


@dataclass(frozen=True)
class Event:
    """An audit event a transition asks the engine to log."""

    name: str
    level: str  # "info", "warning" or "error"
    fields: dict[str, Any]


@dataclass(frozen=True)
class Transition:
    events: tuple[Event, ...] = ()
    stale_in_s: float | None = None  # (re)arm the stale timer this far ahead
    revoke_in_s: float | None = None  # arm the revoke timer this far ahead
    cancel_revoke: bool = False


@dataclass(frozen=True)
class Installed:
    """What a successful read put in the store: the new snapshot and the one it replaced."""

    new: KeySnapshot
    old: KeySnapshot | None


@dataclass
class Freshness:
    """The freshness of one environment's key. Owned by the engine, on the event loop."""

    name: str
    source: str  # the source's name, for events
    refresh: RefreshConfig
    last_attempt_at: datetime | None = None
    last_success_at: datetime | None = None
    last_error: SourceError | None = None
    last_error_at: datetime | None = None
    consecutive_failures: int = 0
    access_lost_at: datetime | None = None
    refusal: KeyUnavailableError | None = field(default=None)
    checked: bool = False  # a first check has completed (succeeded or failed)

    # -- transitions ---------------------------------------------------------------------

    def attempted(self, now: datetime) -> None:
        self.last_attempt_at = now

    def succeeded(self, now: datetime, trigger: Trigger, installed: Installed | None) -> Transition:
        events: list[Event] = []
        if installed is not None:
            events.append(self._key_event(installed, trigger))
        if self.consecutive_failures:
            events.append(
                Event(
                    "key.refresh_recovered",
                    "info",
                    {
                        "environment": self.name,
                        "trigger": trigger,
                        "failures": self.consecutive_failures,
                    },
                )
            )
        if self.refusal is not None and installed is None:
            # A stale key confirmed current again: serving resumes.
            events.append(
                Event("key.restored", "info", {"environment": self.name, "trigger": trigger})
            )
        self.refusal = None
        self.checked = True
        self.last_success_at = now
        self.last_error = None
        self.consecutive_failures = 0
        self.access_lost_at = None
        return Transition(
            tuple(events), stale_in_s=self.refresh.max_stale.total_seconds(), cancel_revoke=True
        )

    def failed(
        self,
        error: SourceError,
        now: datetime,
        trigger: Trigger,
        *,
        held: KeySnapshot | None,
        retry_in_s: float | None,
    ) -> Transition:
        self.last_error = error
        self.last_error_at = now
        self.checked = True
        self.consecutive_failures += 1
        event = Event(
            "key.refresh_failed",
            "error" if error.kind == "permanent" else "warning",
            {
                "environment": self.name,
                "source": self.source,
                "trigger": trigger,
                "error_kind": error.kind,
                "error_code": error.code,
                "reason": error.reason,
                "consecutive_failures": self.consecutive_failures,
                "retry_in_s": retry_in_s,
                "serving_version": held.version if held and self.refusal is None else None,
            },
        )
        revoke_in_s = None
        if isinstance(error, AccessLostError) and self.access_lost_at is None:
            self.access_lost_at = now
            if held is not None:
                revoke_in_s = self.refresh.revoke_grace.total_seconds()
        return Transition((event,), revoke_in_s=revoke_in_s)

    def went_stale(self) -> Transition:
        if self.refusal is not None:
            return Transition()
        age = self.refresh.max_stale.total_seconds()
        self.refusal = KeyUnavailableError(
            "key_stale", f"no successful check of {self.name!r} for over {age:g}s"
        )
        return Transition(
            (Event("key.stale", "error", {"environment": self.name, "reason": self.summary()}),)
        )

    def revoked(self, dropped: KeySnapshot | None) -> Transition:
        self.refusal = KeyUnavailableError(
            "key_revoked", f"access to the key of {self.name!r} was lost: {self.summary()}"
        )
        return Transition(
            (
                Event(
                    "key.revoked",
                    "error",
                    {
                        "environment": self.name,
                        "key_version": dropped.version if dropped else None,
                        "reason": self.summary(),
                    },
                ),
            )
        )

    # -- views ---------------------------------------------------------------------------

    def summary(self) -> str:
        """Why the environment is not healthy, from codes only: shown to every peer."""
        if self.last_error is None:
            return "no check has completed yet"
        return f"last check failed ({self.last_error.kind}: {self.last_error.code})"

    def no_key(self) -> KeyUnavailableError:
        if not self.checked:
            return KeyUnavailableError(
                "starting", f"the first check of {self.name!r} (source {self.source!r}) is running"
            )
        return KeyUnavailableError(
            "no_key", f"no key loaded yet for {self.name!r}: {self.summary()}"
        )

    def health(self, has_key: bool) -> tuple[Health, str | None]:
        if self.refusal is not None:
            return Health.UNAVAILABLE, self.refusal.message
        if not has_key:
            if not self.checked:
                return (
                    Health.UNAVAILABLE,
                    f"starting: the first check of source {self.source!r} is running",
                )
            return Health.UNAVAILABLE, f"no key loaded: {self.summary()}"
        if self.last_error is not None:
            return Health.DEGRADED, f"serving the last good key; {self.summary()}"
        return Health.HEALTHY, None

    def _key_event(self, installed: Installed, trigger: Trigger) -> Event:
        new, old = installed.new, installed.old
        common = {
            "environment": self.name,
            "source": self.source,
            "trigger": trigger,
            "served_by": new.served_by,
        }
        if old is None:
            return Event(
                "key.restored" if self.refusal is not None else "key.loaded",
                "info",
                {
                    **common,
                    "key_version": new.version,
                    "fingerprint": new.fingerprint,
                    "partner_id": new.partner_id,
                },
            )
        return Event(
            "key.rotated",
            "info",
            {
                **common,
                "old_version": old.version,
                "old_fingerprint": old.fingerprint,
                "new_version": new.version,
                "new_fingerprint": new.fingerprint,
            },
        )
