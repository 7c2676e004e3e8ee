"""``TokenBroker.reconfigure``: a reload's Smile ID V3 settings, with a fake token endpoint."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

from sidkeyd.config import SmileIdV3Config
from sidkeyd.tokens import TokenBroker
from support.engine import fake_manager, sandbox

V3 = SmileIdV3Config(url="https://testapi.example")


def broker_with_a_token():
    manager, _, store = fake_manager(smileid=V3)
    minted: list[str] = []

    def fetch(_config: SmileIdV3Config, _partner: str, _key: str) -> tuple[str, int | None]:
        minted.append(_config.url)
        return f"token-{len(minted)}", int(time.time()) + 3600

    broker = TokenBroker({"sandbox": sandbox(smileid=V3)}, manager, store, fetch=fetch)
    return manager, broker, store, minted


def test_an_unchanged_v3_setting_keeps_the_held_token() -> None:
    """Same smileid settings: the token stays and is served again, nothing minted."""
    manager, broker, _, minted = broker_with_a_token()

    async def body() -> None:
        await manager.start()
        first = await broker.token("sandbox")
        broker.reconfigure({"sandbox": sandbox(smileid=V3)})
        again = await broker.token("sandbox")
        broker.stop()
        await manager.stop()
        assert (first, 1) == (again, len(minted))

    asyncio.run(body())


def test_a_changed_v3_url_drops_the_token_and_mints_with_the_new_one() -> None:
    """smileid_url changed: the held token goes; the next one comes from the new URL."""
    manager, broker, store, minted = broker_with_a_token()
    moved = replace(V3, url="https://moved.example")

    async def body() -> None:
        await manager.start()
        await broker.token("sandbox")
        broker.reconfigure({"sandbox": sandbox(smileid=moved)})
        dropped = store.token("sandbox")
        await broker.token("sandbox")
        broker.stop()
        await manager.stop()
        assert (None, ["https://testapi.example", "https://moved.example"]) == (dropped, minted)

    asyncio.run(body())


def test_v3_removed_from_an_environment_forgets_it_and_its_token() -> None:
    """No smileid any more: the broker no longer knows the environment; its token is gone."""
    manager, broker, store, _ = broker_with_a_token()

    async def body() -> None:
        await manager.start()
        await broker.token("sandbox")
        broker.reconfigure({"sandbox": sandbox()})
        broker.stop()
        await manager.stop()
        assert (False, None) == ("sandbox" in broker, store.token("sandbox"))

    asyncio.run(body())
