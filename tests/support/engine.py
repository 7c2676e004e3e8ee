"""One builder for a rotation engine over any sources (fakes or real), for in-process tests."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from sidkeyd.config import EnvironmentConfig
from sidkeyd.keystore import KeyStore
from sidkeyd.rotation import KeyManager
from sidkeyd.sources import Source
from support.fakes import FakeSource


def make_manager(
    sources: Mapping[str, Source],
    *environments: EnvironmentConfig,
    store: KeyStore | None = None,
    **options: Any,
) -> tuple[KeyManager, KeyStore]:
    """A KeyManager, not started, for ``environments`` on ``sources``; a stable hostname and rng.

    ``options`` go to KeyManager (``shutdown_timeout_s``, ``now``...).
    """
    store = store if store is not None else KeyStore()
    options.setdefault("hostname", "test")
    options.setdefault("rng", random.Random(1))
    manager = KeyManager({env.name: env for env in environments}, sources, store, **options)
    return manager, store


def sandbox(
    source: str = "fake", secret: str = "smileid/sandbox", **fields: Any
) -> EnvironmentConfig:
    """The ``sandbox`` environment on ``source``, partner id 085 unless ``fields`` say otherwise."""
    fields.setdefault("partner_id", "085")
    return EnvironmentConfig(name="sandbox", source=source, secret=secret, **fields)


def fake_manager(
    key: str = "key-one", version: str = "v1", **fields: Any
) -> tuple[KeyManager, FakeSource, KeyStore]:
    """A KeyManager over one FakeSource holding ``key`` for ``sandbox``."""
    source = FakeSource("fake")
    source.put("smileid/sandbox", key, version)
    manager, store = make_manager({"fake": source}, sandbox(**fields))
    return manager, source, store
