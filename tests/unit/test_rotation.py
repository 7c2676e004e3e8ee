"""The rotation engine with an in-memory source: loads, rotations, failures, single flight."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TypeVar

import pytest
from structlog.testing import capture_logs

from sidkeyd.backoff import backoff_delay
from sidkeyd.config import RefreshConfig
from sidkeyd.errors import AccessLostError, KeyUnavailableError, TransientSourceError
from sidkeyd.freshness import Health, Trigger
from sidkeyd.scheduling import host_offset
from support.engine import make_manager, sandbox
from support.fakes import FakeSource

T = TypeVar("T")


def make(refresh: RefreshConfig | None = None, partner_id: str | None = "085", **options):
    source = FakeSource("fake")
    source.put("smileid/sandbox", "key-one", "v1")
    env = sandbox(partner_id=partner_id, refresh=refresh or RefreshConfig())
    manager, store = make_manager({"fake": source}, env, hostname="h", **options)
    return manager, source, store


def run(body: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(body())


async def until(condition: Callable[[], bool]) -> None:
    """Let the loop run until ``condition`` holds (timers at 0s fire on the next turns)."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


def test_start_loads_every_environment() -> None:
    """After start the key is held and key.loaded was logged with version and fingerprint."""
    manager, _, store = make()

    async def body() -> None:
        with capture_logs() as logs:
            await manager.start()
        await manager.stop()
        loaded = [e for e in logs if e["event"] == "key.loaded"]
        assert ["v1"] == [e["key_version"] for e in loaded]
        assert "v1" == store.get("sandbox").version  # type: ignore[union-attr]

    run(body)


def test_rotation_swaps_the_key_and_logs_old_and_new() -> None:
    """A new version in the source becomes the signing key; key.rotated names both."""
    manager, source, _ = make()

    async def body() -> None:
        await manager.start()
        source.put("smileid/sandbox", "key-two", "v2")
        with capture_logs() as logs:
            outcome = await manager.check("sandbox", Trigger.ADMIN)
        await manager.stop()
        assert (True, "v2") == (outcome.changed, manager.signing_key("sandbox").version)
        rotated = next(e for e in logs if e["event"] == "key.rotated")
        assert ("v1", "v2") == (rotated["old_version"], rotated["new_version"])

    run(body)


def test_scheduled_check_passes_the_held_version_and_forced_does_not() -> None:
    """The source may answer a cheap Unchanged unless the check is forced."""
    manager, source, _ = make()

    async def body() -> None:
        await manager.start()
        await manager.check("sandbox", Trigger.SCHEDULE)
        await manager.check("sandbox", Trigger.ADMIN, force=True)
        await manager.stop()

    run(body)
    assert [("sandbox", None), ("sandbox", "v1"), ("sandbox", None)] == source.fetches


def test_concurrent_checks_share_one_backend_call() -> None:
    """Single flight: ten triggers while a fetch is running cause no second fetch."""
    manager, source, _ = make()

    async def body() -> None:
        await manager.start()
        source.gate = threading.Event()
        source.entered.clear()
        checks = [
            asyncio.ensure_future(manager.check("sandbox", Trigger.REPORT, force=True))
            for _ in range(10)
        ]
        await asyncio.get_running_loop().run_in_executor(None, source.entered.wait, 10)
        source.gate.set()
        outcomes = await asyncio.gather(*checks)
        await manager.stop()
        assert {"v1"} == {o.key_version for o in outcomes}

    run(body)
    assert 2 == len(source.fetches)  # the startup load and one shared check


def test_failure_keeps_the_last_good_key_and_degrades_health() -> None:
    """A transient error leaves the key in use; health says degraded with the reason."""
    manager, source, _ = make()

    async def body() -> None:
        await manager.start()
        source.errors.append(TransientSourceError("backend timed out", code="timeout"))
        with capture_logs() as logs:
            outcome = await manager.check("sandbox", Trigger.SCHEDULE)
        health, reason = manager.health("sandbox")
        await manager.stop()
        assert ("v1", "backend timed out") == (outcome.key_version, outcome.error)
        assert "v1" == manager.signing_key("sandbox").version
        assert Health.DEGRADED == health
        assert "timeout" in (reason or "")
        failed = next(e for e in logs if e["event"] == "key.refresh_failed")
        assert ("transient", "v1") == (failed["error_kind"], failed["serving_version"])

    run(body)


def test_failed_startup_load_means_no_key_until_a_check_succeeds() -> None:
    """No key at start: sign refuses with no_key; a later success loads it."""
    manager, source, _ = make()
    source.errors.append(TransientSourceError("down", code="connection_error"))

    async def body() -> None:
        await manager.start()
        with pytest.raises(KeyUnavailableError) as caught:
            manager.signing_key("sandbox")
        assert "no_key" == caught.value.code
        assert Health.UNAVAILABLE == manager.health("sandbox")[0]
        await manager.check("sandbox", Trigger.SCHEDULE)
        await manager.stop()
        assert "v1" == manager.signing_key("sandbox").version

    run(body)


def test_partner_id_mismatch_is_a_failure_not_a_new_key() -> None:
    """A secret whose partner id differs from the config's is refused."""
    manager, source, _ = make()

    async def body() -> None:
        await manager.start()
        source.put("smileid/sandbox", "key-two", "v2", partner_id="999")
        outcome = await manager.check("sandbox", Trigger.ADMIN)
        await manager.stop()
        assert ("v1", True) == (manager.signing_key("sandbox").version, "differs" in outcome.error)

    run(body)


def test_missing_partner_id_everywhere_is_a_failure() -> None:
    """Neither config nor secret has a partner id: nothing can be signed."""
    manager, _, _ = make(partner_id=None)

    async def body() -> None:
        await manager.start()
        await manager.stop()
        assert "partner_id_missing" == manager.status("sandbox").last_error.code  # type: ignore[union-attr]

    run(body)


def test_access_lost_drops_the_key_after_the_grace() -> None:
    """Access denied: served during revoke_grace, then dropped and refused as key_revoked."""
    manager, source, store = make(RefreshConfig(revoke_grace=timedelta(0)))

    async def body() -> None:
        await manager.start()
        source.errors.append(AccessLostError("denied", code="access_denied"))
        with capture_logs() as logs:
            await manager.check("sandbox", Trigger.SCHEDULE)
            await until(lambda: store.get("sandbox") is None)
        with pytest.raises(KeyUnavailableError) as caught:
            manager.signing_key("sandbox")
        assert "key_revoked" == caught.value.code
        assert "key.revoked" in [e["event"] for e in logs]
        with capture_logs() as logs:
            await manager.check("sandbox", Trigger.ADMIN)
        await manager.stop()
        assert "v1" == manager.signing_key("sandbox").version
        assert "key.restored" in [e["event"] for e in logs]

    run(body)


def test_no_successful_check_within_max_stale_refuses_key_stale() -> None:
    """Past max_stale without a good check the key is refused (the stale timer fired).

    That a good check lifts the refusal is the freshness state's rule: test_freshness.py.
    """
    manager, _source, _ = make(RefreshConfig(max_stale=timedelta(0)))

    async def body() -> None:
        await manager.start()
        await until(lambda: manager.health("sandbox")[0] is Health.UNAVAILABLE)
        with pytest.raises(KeyUnavailableError) as caught:
            manager.signing_key("sandbox")
        await manager.stop()
        assert "key_stale" == caught.value.code

    run(body)


def test_previous_key_verifies_only_within_the_window() -> None:
    """verification_keys has the previous key only while verify_previous_for lasts."""
    manager, source, _ = make(RefreshConfig(verify_previous_for=timedelta(hours=1)))

    async def body() -> None:
        await manager.start()
        source.put("smileid/sandbox", "key-two", "v2")
        await manager.check("sandbox", Trigger.ADMIN)
        await manager.stop()
        assert ["v2", "v1"] == [k.version for k in manager.verification_keys("sandbox")]

    run(body)


def test_backoff_stays_within_bounds_and_grows() -> None:
    """Full jitter between backoff_min and an exponentially growing cap at most backoff_max."""
    rng = random.Random(7)
    low, high = timedelta(seconds=1), timedelta(seconds=60)
    for failures in range(1, 20):
        ceiling = min(60.0, 2 ** (failures - 1))
        delays = [backoff_delay(failures, low, high, rng) for _ in range(50)]
        assert all(1.0 <= d <= max(ceiling, 1.0) for d in delays)
    assert max(backoff_delay(10, low, high, rng) for _ in range(200)) > 30


def test_host_offset_is_stable_and_within_the_interval() -> None:
    """The same host and environment get the same offset; different hosts spread out."""
    interval = timedelta(seconds=60)
    offsets = {host_offset(f"host-{i}", "sandbox", interval) for i in range(50)}
    assert host_offset("a", "sandbox", interval) == host_offset("a", "sandbox", interval)
    assert all(timedelta(0) <= o < interval for o in offsets)
    assert len(offsets) > 40


def test_report_of_an_old_version_answers_without_a_check() -> None:
    """A client reporting a version already replaced is told the current one at once."""
    manager, source, _ = make()

    async def body() -> None:
        await manager.start()
        source.put("smileid/sandbox", "key-two", "v2")
        await manager.check("sandbox", Trigger.SCHEDULE)
        fetches = len(source.fetches)
        outcome = await manager.report("sandbox", "v1", "401")
        await manager.stop()
        assert ("v2", "already_rotated", fetches) == (
            outcome.key_version,
            outcome.reason,
            len(source.fetches),
        )

    run(body)


def test_report_of_the_held_version_checks_now_and_returns_the_new_one() -> None:
    """Rejected with the held key: a forced check picks up the rotation."""
    manager, source, _ = make()

    async def body() -> None:
        await manager.start()
        source.put("smileid/sandbox", "key-two", "v2")
        outcome = await manager.report("sandbox", "v1", "401")
        await manager.stop()
        assert ("v2", True, True) == (outcome.key_version, outcome.checked, outcome.changed)

    run(body)


def test_burst_of_reports_makes_one_backend_call() -> None:
    """100 concurrent reports share one check; a report just after is rate limited."""
    manager, source, _ = make()

    async def body() -> None:
        await manager.start()
        outcomes = await asyncio.gather(
            *(manager.report("sandbox", "v1", "401") for _ in range(100))
        )
        late = await manager.report("sandbox", "v1", "401")
        await manager.stop()
        assert {"checked"} == {o.reason for o in outcomes}
        assert "rate_limited" == late.reason

    run(body)
    assert 2 == len(source.fetches)  # startup and the one report-forced check


def test_watcher_notification_checks_matching_environments() -> None:
    """A watching source's change event forces a check of the environments that hold it."""
    manager, source, _ = make()
    watchers: list = []
    source.watch = watchers.append  # type: ignore[attr-defined]
    source.matches = lambda secret, changed: secret == changed  # type: ignore[attr-defined]

    async def body() -> None:
        await manager.start()
        source.put("smileid/sandbox", "key-two", "v2")
        with capture_logs() as logs:
            watchers[0]("other/secret")
            watchers[0]("smileid/sandbox")
            await manager.settle()
        await manager.stop()
        assert "v2" == manager.signing_key("sandbox").version
        forced = [e for e in logs if e["event"] == "refresh.forced"]
        assert [("notify", "smileid/sandbox")] == [(e["trigger"], e["secret"]) for e in forced]

    run(body)


def test_forced_check_does_not_join_a_scheduled_check_already_reading() -> None:
    """A scheduled check may have read before the rotation: a forced one reads again after it."""
    manager, source, _ = make()

    async def body() -> None:
        await manager.start()
        source.gate = threading.Event()
        source.entered.clear()
        scheduled = asyncio.ensure_future(manager.check("sandbox", Trigger.SCHEDULE))
        await asyncio.get_running_loop().run_in_executor(None, source.entered.wait, 10)
        # The admin forces a check while the scheduled one is on the wire; the rotation then
        # becomes visible only to reads that start after the scheduled one has finished.
        forced = asyncio.ensure_future(manager.check("sandbox", Trigger.ADMIN, force=True))
        await asyncio.sleep(0)
        source.gate.set()
        first = await scheduled
        source.gate = None
        source.put("smileid/sandbox", "key-two", "v2")
        outcome = await forced
        await manager.stop()
        assert ("v1", "v2", True) == (first.key_version, outcome.key_version, outcome.changed)

    run(body)


def test_recovery_after_failures_is_logged() -> None:
    """The first success after failures says how many checks failed."""
    manager, source, _ = make()

    async def body() -> None:
        await manager.start()
        source.errors.extend([TransientSourceError("down", code="timeout")] * 2)
        await manager.check("sandbox", Trigger.SCHEDULE)
        await manager.check("sandbox", Trigger.SCHEDULE)
        with capture_logs() as logs:
            await manager.check("sandbox", Trigger.ADMIN, force=True)
        await manager.stop()
        recovered = next(e for e in logs if e["event"] == "key.refresh_recovered")
        assert (2, "admin") == (recovered["failures"], recovered["trigger"])

    run(body)


def test_stop_does_not_wait_forever_for_a_stuck_source() -> None:
    """A source whose close() hangs is given shutdown_timeout, then left behind and named."""
    manager, source, _ = make(shutdown_timeout_s=0.05)
    release = threading.Event()
    source.close = lambda: release.wait(30)  # type: ignore[method-assign]

    async def body() -> None:
        await manager.start()
        with capture_logs() as logs:
            await manager.stop()
        release.set()
        timeout = next(e for e in logs if e["event"] == "source.close_timeout")
        assert ["fake"] == timeout["sources"]

    run(body)


def test_stop_closes_every_source() -> None:
    """Sources are closed at stop."""
    manager, source, _ = make()

    async def body() -> None:
        await manager.start()
        await manager.stop()

    run(body)
    assert source.closed


def test_a_partner_id_field_holding_the_key_is_refused_without_quoting_it() -> None:
    """The secret's "partner id" is the key itself: refused, and the reason never quotes it."""
    manager, source, _ = make(partner_id=None)
    wrong = "key-in-the-wrong-field"
    source.put("smileid/sandbox", wrong, "v2", partner_id=wrong)

    async def body() -> str | None:
        outcome = await manager.check("sandbox", Trigger.ADMIN, force=True)
        return outcome.error

    error = run(body)
    assert error is not None
    assert ("partner_id_invalid", False) == (
        manager.status("sandbox").last_error.code,  # type: ignore[union-attr]
        "key-in-the-wrong-field" in error,
    )


def test_a_version_id_holding_the_key_is_refused_and_the_last_good_key_kept() -> None:
    """A rotation whose version id contains the new key (an AWS ClientRequestToken set to
    it): key_version_invalid, the reason quotes neither, and v1's key goes on signing."""
    manager, source, _ = make()
    rotated = "rotated-key-7f3e-0000-0000-not-real"

    async def body() -> tuple[str | None, str]:
        await manager.start()
        source.put("smileid/sandbox", rotated, f"ver-{rotated}")
        outcome = await manager.check("sandbox", Trigger.ADMIN, force=True)
        signing = manager.signing_key("sandbox")
        await manager.stop()
        return outcome.error, signing.version

    error, signing_version = run(body)
    assert ("key_version_invalid", "v1", False) == (
        manager.status("sandbox").last_error.code,  # type: ignore[union-attr]
        signing_version,
        rotated in (error or rotated),
    )


def test_a_version_id_equal_to_the_key_is_refused_at_start() -> None:
    """The first read's version is the key itself: no key is held, none is shown."""
    manager, source, store = make()
    first = "first-key-1a2b-0000-0000-not-real"
    source.put("smileid/sandbox", first, first)

    async def body() -> str | None:
        outcome = await manager.check("sandbox", Trigger.ADMIN, force=True)
        return outcome.error

    error = run(body)
    assert ("key_version_invalid", None, False) == (
        manager.status("sandbox").last_error.code,  # type: ignore[union-attr]
        store.get("sandbox"),
        first in (error or first),
    )


def test_a_mismatched_partner_id_is_not_quoted() -> None:
    """A secret's partner id that differs from the config's is named by field, not value."""
    manager, source, _ = make()
    source.put("smileid/sandbox", "key-two", "v2", partner_id="999")

    async def body() -> str | None:
        return (await manager.check("sandbox", Trigger.ADMIN, force=True)).error

    error = run(body)
    assert error is not None
    assert ("partner_id_mismatch", False) == (
        manager.status("sandbox").last_error.code,  # type: ignore[union-attr]
        "999" in error,
    )


def test_a_failure_reason_is_scrubbed_of_the_held_key() -> None:
    """A source error quoting the key held is stored and shown with [REDACTED] instead."""
    manager, source, _ = make()

    async def body() -> str | None:
        await manager.start()
        source.errors.append(
            TransientSourceError("backend said key-one is cached", code="service_error")
        )
        outcome = await manager.check("sandbox", Trigger.ADMIN, force=True)
        await manager.stop()
        return outcome.error

    assert "backend said [REDACTED] is cached" == run(body)


def test_health_and_refusals_name_codes_not_backend_text() -> None:
    """The reason every peer sees (health, 503) carries the error's kind and code only."""
    manager, source, _ = make()
    source.errors.append(TransientSourceError("the backend's own words", code="service_error"))

    async def body() -> tuple[str | None, str]:
        await manager.check("sandbox", Trigger.STARTUP)
        try:
            manager.signing_key("sandbox")
        except KeyUnavailableError as exc:
            return manager.health("sandbox")[1], exc.message
        raise AssertionError("signed without a key")

    reason, refusal = run(body)
    assert "no key loaded: last check failed (transient: service_error)" == reason
    assert "backend's own words" not in refusal
