"""In-memory stand-ins behind the same interfaces as the real parts, for unit tests."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

from sidkeyd.config import EnvironmentConfig
from sidkeyd.errors import SourceError
from sidkeyd.keystore import ApiKey
from sidkeyd.sources import FetchResult, SecretValue, Unchanged


class FakeSource:
    """A programmable ``Source``: holds one secret per reference, or raises a queued error."""

    def __init__(self, name: str = "fake") -> None:
        self.name = name
        self.secrets: dict[str, tuple[str, str | None, str]] = {}
        self.errors: deque[SourceError] = deque()
        self.fetches: list[tuple[str, str | None]] = []
        self.gate: threading.Event | None = None  # when set, fetch waits for it
        self.entered = threading.Event()
        self.on_fetch: Callable[[], None] | None = None
        self.closed = False

    def put(self, secret: str, api_key: str, version: str, partner_id: str | None = None) -> None:
        self.secrets[secret] = (api_key, partner_id, version)

    def fetch(self, environment: EnvironmentConfig, held_version: str | None) -> FetchResult:
        self.fetches.append((environment.name, held_version))
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(10)
        if self.errors:
            raise self.errors.popleft()
        api_key, partner_id, version = self.secrets[environment.secret]
        if version == held_version:
            return Unchanged(version)
        return SecretValue(ApiKey(api_key), partner_id, version)

    def close(self) -> None:
        self.closed = True
