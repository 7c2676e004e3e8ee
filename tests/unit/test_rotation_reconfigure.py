"""``KeyManager.reconfigure``: a reload's environments and sources swapped into a running engine."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import TypeVar

from structlog.testing import capture_logs

from sidkeyd.config import EnvironmentConfig, RefreshConfig
from sidkeyd.errors import KeyUnavailableError
from sidkeyd.freshness import Trigger
from sidkeyd.sources import FetchResult, RemoteKey, Unchanged
from support.engine import make_manager, sandbox
from support.fakes import FakeSource

T = TypeVar("T")


def production(source: str = "fake", **fields: object) -> EnvironmentConfig:
    return EnvironmentConfig(
        name="production", source=source, secret="smileid/production", partner_id="085", **fields
    )


def two_environments() -> tuple[FakeSource, dict[str, EnvironmentConfig]]:
    source = FakeSource("fake")
    source.put("smileid/sandbox", "key-sandbox", "s1")
    source.put("smileid/production", "key-production", "p1")
    return source, {"sandbox": sandbox(), "production": production()}


def run(body: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(body())


def test_a_kept_environment_keeps_its_key_object_without_a_fetch() -> None:
    """production added: sandbox's snapshot is the same object and the source was not asked."""
    source, envs = two_environments()
    manager, store = make_manager({"fake": source}, envs["sandbox"])

    async def body() -> None:
        await manager.start()
        held = store.get("sandbox")
        manager.reconfigure(envs, {"fake": source}, renewed=[])
        assert (held, [("sandbox", None)]) == (store.get("sandbox"), source.fetches)
        await manager.stop()

    run(body)


def test_an_added_environment_answers_starting_until_its_first_check() -> None:
    """The new environment refuses with ``starting``, then signs after one check."""
    source, envs = two_environments()
    manager, _ = make_manager({"fake": source}, envs["sandbox"])

    async def body() -> None:
        await manager.start()
        manager.reconfigure(envs, {"fake": source}, renewed=[])
        try:
            manager.signing_key("production")
        except KeyUnavailableError as exc:
            starting = exc.code
        await manager.check("production", Trigger.RELOAD)
        assert ("starting", "p1") == (starting, manager.signing_key("production").version)
        await manager.stop()

    run(body)


def test_a_removed_environment_is_unknown_and_its_keys_dropped() -> None:
    """production removed: not in the engine, its current and previous keys out of the store."""
    source, envs = two_environments()
    manager, store = make_manager({"fake": source}, *envs.values())

    async def body() -> None:
        await manager.start()
        source.put("smileid/production", "key-production-2", "p2")
        await manager.check("production", Trigger.ADMIN, force=True)  # p1 becomes previous
        manager.reconfigure({"sandbox": envs["sandbox"]}, {"fake": source}, renewed=[])
        assert (False, None, None, ["sandbox"]) == (
            "production" in manager,
            store.get("production"),
            store.previous("production"),
            manager.environments,
        )
        assert "key-production" not in store.secrets()
        await manager.stop()

    run(body)


def test_a_renewed_environment_drops_its_key_and_reads_again() -> None:
    """sandbox's secret changed: the old key goes at once; the next check reads in full."""
    source, envs = two_environments()
    source.put("smileid/sandbox-v2", "key-sandbox-2", "s2")
    manager, store = make_manager({"fake": source}, envs["sandbox"])

    async def body() -> None:
        await manager.start()
        renewed = sandbox(secret="smileid/sandbox-v2")
        manager.reconfigure({"sandbox": renewed}, {"fake": source}, renewed=["sandbox"])
        dropped = store.get("sandbox")
        await manager.check("sandbox", Trigger.RELOAD)
        assert (None, "s2") == (dropped, manager.signing_key("sandbox").version)
        await manager.stop()

    run(body)


def test_a_check_in_flight_for_a_renewed_environment_lands_unapplied() -> None:
    """A read of the old secret that returns after the reload installs nothing."""
    source, envs = two_environments()
    manager, store = make_manager({"fake": source}, envs["sandbox"])

    async def body() -> None:
        await manager.start()
        source.put("smileid/sandbox", "key-sandbox-old-read", "s9")
        source.gate = gate = threading.Event()
        source.entered.clear()
        stale = asyncio.ensure_future(manager.check("sandbox", Trigger.ADMIN, force=True))
        await asyncio.to_thread(source.entered.wait, 10)
        renewed = sandbox(secret="smileid/production")
        manager.reconfigure({"sandbox": renewed}, {"fake": source}, renewed=["sandbox"])
        gate.set()
        outcome = await stale
        assert (None, None) == (outcome.key_version, store.get("sandbox"))
        source.gate = None
        await manager.check("sandbox", Trigger.RELOAD)
        assert "p1" == manager.signing_key("sandbox").version
        await manager.stop()

    run(body)


def test_a_new_refresh_interval_reschedules_a_kept_environment() -> None:
    """interval 1h -> 10s: the next check moves within the new interval; the key stays."""
    source, _ = two_environments()
    hourly = sandbox(refresh=RefreshConfig(interval=timedelta(hours=1)))
    manager, store = make_manager({"fake": source}, hourly)

    async def body() -> None:
        await manager.start()
        held = store.get("sandbox")
        often = sandbox(refresh=RefreshConfig(interval=timedelta(seconds=10)))
        manager.reconfigure({"sandbox": often}, {"fake": source}, renewed=[])
        next_at = manager.next_check_at("sandbox")
        assert next_at is not None
        assert held is not None
        assert held is store.get("sandbox")
        assert next_at - held.loaded_at <= timedelta(seconds=11)
        await manager.stop()

    run(body)


def test_a_retired_source_is_closed_and_the_new_one_used() -> None:
    """The source under the same name replaced: the old is closed, checks ask the new one."""
    old, envs = two_environments()
    new = FakeSource("fake")
    new.put("smileid/sandbox", "key-sandbox-new", "n1")
    manager, _ = make_manager({"fake": old}, envs["sandbox"])

    async def body() -> None:
        await manager.start()
        manager.reconfigure({"sandbox": envs["sandbox"]}, {"fake": new}, renewed=["sandbox"])
        await manager.check("sandbox", Trigger.RELOAD)
        await manager.stop()
        assert "n1" == manager.signing_key("sandbox").version

    run(body)
    assert (True, [("sandbox", None)]) == (old.closed, new.fetches)


def test_a_reload_check_of_a_kept_environment_is_a_version_check() -> None:
    """check_soon(force=False): the held version is passed, so nothing is read in full."""
    source, envs = two_environments()
    manager, _ = make_manager({"fake": source}, envs["sandbox"])

    async def body() -> None:
        await manager.start()
        with capture_logs() as logs:
            manager.check_soon(Trigger.RELOAD, force=False)
            await manager.settle()
        await manager.stop()
        assert [] == [e for e in logs if e["event"] == "refresh.forced"]

    run(body)
    assert [("sandbox", None), ("sandbox", "s1")] == source.fetches


class RemoteFakeSource(FakeSource):
    """A source whose environments are signed remotely: each check answers one key version."""

    def fetch(self, environment: EnvironmentConfig, held_version: str | None) -> FetchResult:
        self.fetches.append((environment.name, held_version))
        if held_version == "1":
            return Unchanged("1")
        return RemoteKey(LocalHmacSigner())


class LocalHmacSigner:
    """A ``RemoteSigner`` that signs locally (the table's contents do not matter here)."""

    backend = "transit"
    version = "1"

    def sign(self, messages: Sequence[bytes]) -> list[str]:
        return ["A" * 43 + "=" for _ in messages]

    def verify(self, message: bytes, signature: str) -> bool:
        return False


def refill_loops() -> list[asyncio.Task[object]]:
    """The presign refill loops still running on this event loop."""
    return [
        task
        for task in asyncio.all_tasks()
        if not task.done() and "_keep_filled" in getattr(task.get_coro(), "__qualname__", "")
    ]


def test_a_removed_remote_environment_stops_refilling_and_drops_its_table() -> None:
    """Its snapshot leaves the store and its table and refill loop go with it, as at a
    rotation: no presigned signature and no backend call is left behind."""
    remote_source = RemoteFakeSource("remote")
    source, envs = two_environments()
    transit = sandbox("remote", signer="transit", transit_key="smileid-sandbox")
    sources = {"fake": source, "remote": remote_source}
    manager, store = make_manager(sources, transit, envs["production"])

    async def body() -> None:
        await manager.start()
        held = store.get("sandbox")
        running = len(refill_loops())
        manager.reconfigure({"production": envs["production"]}, {"fake": source}, renewed=[])
        for _ in range(5):  # let the cancelled loop unwind
            await asyncio.sleep(0)
        left = (running, len(refill_loops()), held is not None and held.remote is not None)
        await manager.stop()
        assert (1, 0, True) == left

    run(body)
