"""Fixtures shared by every suite. Servers are started by the suite itself, on loopback."""

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from sidkeyd.keystore import fingerprint
from support.daemon import ALL_LOGS, ALL_SECRETS
from support.fake_smileid import FakeSmileId
from support.moto_server import moto_endpoint  # noqa: F401  (fixture)
from support.openbao_server import openbao, private_openbao  # noqa: F401  (fixtures)


@pytest.fixture(scope="session", autouse=True)
def no_key_in_any_daemon_log() -> Iterator[None]:
    """After the whole session: no key any test declared appears in any daemon's log."""
    yield
    leaks = []
    for log in ALL_LOGS:
        if not log.exists():
            continue
        text = log.read_text(errors="replace")
        leaks.extend(f"{log}: key {fingerprint(s)}" for s in ALL_SECRETS if s in text)
    assert [] == leaks, "key material found in daemon logs"


@pytest.fixture
def fake_smileid() -> Iterator[Callable[..., FakeSmileId]]:
    """Start strict fake Smile ID servers: ``fake_smileid(api_key, partner_id)``; stopped after."""
    started: list[FakeSmileId] = []

    def start(api_key: str, partner_id: str = "085", **options: Any) -> FakeSmileId:
        ALL_SECRETS.add(api_key)
        fake = FakeSmileId(api_key, partner_id, **options).start()
        started.append(fake)
        return fake

    yield start
    for fake in started:
        fake.stop()
