"""The freshness state machine on its own: no event loop, no source, no timers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sidkeyd.config import RefreshConfig
from sidkeyd.errors import AccessLostError, TransientSourceError
from sidkeyd.freshness import Freshness, Health, Installed, Trigger
from sidkeyd.keystore import ApiKey, KeySnapshot

NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
REFRESH = RefreshConfig(max_stale=timedelta(hours=1), revoke_grace=timedelta(minutes=5))


def snapshot(version: str) -> KeySnapshot:
    return KeySnapshot.create(
        environment="sandbox",
        partner_id="085",
        version=version,
        api_key=ApiKey(f"key-{version}"),
        loaded_at=NOW,
    )


def fresh() -> Freshness:
    return Freshness("sandbox", "fake", REFRESH)


def names(transition) -> list[str]:
    return [event.name for event in transition.events]


def test_a_first_load_is_key_loaded_and_arms_the_stale_timer() -> None:
    """Nothing held before: key.loaded, stale timer at max_stale, revoke timer cancelled."""
    state = fresh()
    transition = state.succeeded(NOW, Trigger.STARTUP, Installed(snapshot("v1"), None))
    assert (["key.loaded"], 3600.0, True) == (
        names(transition),
        transition.stale_in_s,
        transition.cancel_revoke,
    )


def test_a_new_version_is_key_rotated_naming_both() -> None:
    """A read that replaced a held key: key.rotated with old and new versions."""
    transition = fresh().succeeded(NOW, Trigger.REPORT, Installed(snapshot("v2"), snapshot("v1")))
    event = transition.events[0]
    assert ("key.rotated", "v1", "v2") == (
        event.name,
        event.fields["old_version"],
        event.fields["new_version"],
    )


def test_a_failure_is_counted_and_the_key_kept() -> None:
    """A transient failure: degraded, counted, no timer, the code in the reason."""
    state = fresh()
    held = snapshot("v1")
    transition = state.failed(
        TransientSourceError("the backend's words", code="throttled"),
        NOW,
        Trigger.SCHEDULE,
        held=held,
        retry_in_s=1.5,
    )
    event = transition.events[0]
    assert (1, "warning", "v1", None) == (
        state.consecutive_failures,
        event.level,
        event.fields["serving_version"],
        transition.revoke_in_s,
    )
    assert (
        Health.DEGRADED,
        "serving the last good key; last check failed (transient: throttled)",
    ) == (state.health(has_key=True))


def test_lost_access_starts_the_revoke_grace_once() -> None:
    """The first AccessLostError with a key held arms the revoke timer; the second does not."""
    state = fresh()
    lost = AccessLostError("denied", code="access_denied")
    first = state.failed(lost, NOW, Trigger.SCHEDULE, held=snapshot("v1"), retry_in_s=None)
    second = state.failed(lost, NOW, Trigger.SCHEDULE, held=snapshot("v1"), retry_in_s=None)
    assert (300.0, None) == (first.revoke_in_s, second.revoke_in_s)


def test_stale_then_a_good_check_restores_serving() -> None:
    """went_stale refuses key_stale; the next success lifts it and logs key.restored."""
    state = fresh()
    stale = state.went_stale()
    refused = state.refusal
    recovered = state.succeeded(NOW, Trigger.ADMIN, None)
    assert (["key.stale"], "key_stale") == (names(stale), refused.code if refused else None)
    assert (["key.restored"], None) == (names(recovered), state.refusal)


def test_going_stale_twice_logs_once() -> None:
    """A second stale timer while already refusing changes nothing and logs nothing."""
    state = fresh()
    state.went_stale()
    assert [] == names(state.went_stale())


def test_revoked_refuses_and_a_reload_is_key_restored() -> None:
    """After the grace the key is dropped (key_revoked); a later load says key.restored."""
    state = fresh()
    revoked = state.revoked(snapshot("v1"))
    code = state.refusal.code if state.refusal else None
    restored = state.succeeded(NOW, Trigger.SCHEDULE, Installed(snapshot("v1"), None))
    assert (["key.revoked"], "key_revoked", ["key.restored"]) == (
        names(revoked),
        code,
        names(restored),
    )


def test_recovery_after_failures_is_logged_with_the_count() -> None:
    """A success after two failures logs key.refresh_recovered with failures=2."""
    state = fresh()
    for _ in range(2):
        state.failed(TransientSourceError("x"), NOW, Trigger.SCHEDULE, held=None, retry_in_s=None)
    event = state.succeeded(NOW, Trigger.ADMIN, None).events[0]
    assert ("key.refresh_recovered", 2, 0) == (
        event.name,
        event.fields["failures"],
        state.consecutive_failures,
    )
