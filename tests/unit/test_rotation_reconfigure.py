"""``KeyManager.reconfigure``: a reload's environments and sources swapped into a running engine."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import TypeVar

import pytest
from structlog.testing import capture_logs

from sidkeyd.config import EnvironmentConfig, RefreshConfig
from sidkeyd.errors import KeyUnavailableError
from sidkeyd.freshness import Trigger
from sidkeyd.presign import RemoteSigning
from sidkeyd.sources import FetchResult, RemoteKey
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


class CountingSigner:
    """A remote key version that answers every batch and counts the messages it signed."""

    backend = "transit"
    version = "1"

    def __init__(self) -> None:
        self.signed = 0

    def sign(self, messages: Sequence[bytes]) -> list[str]:
        self.signed += len(messages)
        return ["c2lnbmF0dXJl"] * len(messages)

    def verify(self, message: bytes, signature: str) -> bool:
        return False


class RemoteSource:
    """A source whose environments sign remotely with one ``CountingSigner``."""

    name = "remote"

    def __init__(self) -> None:
        self.signer = CountingSigner()

    def fetch(self, environment: EnvironmentConfig, held_version: str | None) -> FetchResult:
        return RemoteKey(self.signer)

    def close(self) -> None:
        pass


@pytest.mark.parametrize("renewed", [[], ["sandbox"]], ids=["removed", "renewed"])
def test_a_remote_signer_removed_or_renewed_stops_refilling_and_drops_its_table(
    renewed: list[str],
) -> None:
    """signer = "transit" removed by a reload, or renewed: the old key version is retired (its
    presigned table emptied, its refills stopped), not left calling the backend."""
    source = RemoteSource()
    manager, store = make_manager({"remote": source}, sandbox("remote"))

    async def filled(remote: RemoteSigning) -> None:  # the first refill runs in the sign pool
        while not remote.presigned_for_s():
            await asyncio.sleep(0.005)

    async def body() -> None:
        await manager.start()
        old = store.get("sandbox")
        assert old is not None
        assert old.remote is not None
        await asyncio.wait_for(filled(old.remote), 10)
        kept = {"sandbox": sandbox("remote")} if renewed else {}
        manager.reconfigure(kept, {"remote": source}, renewed=renewed)
        assert 0.0 == old.remote.presigned_for_s()
        await manager.stop()

    run(body)
