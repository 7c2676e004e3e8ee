"""What the routes need of the rotation engine, and which environment a request may use."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from sidkeyd.checks import CheckOutcome
from sidkeyd.errors import BadRequest
from sidkeyd.freshness import Health, Trigger
from sidkeyd.keystore import KeySnapshot
from sidkeyd.log import untrusted
from sidkeyd.peer import Peer
from sidkeyd.policy import AccessPolicy
from sidkeyd.rotation import ReportOutcome
from sidkeyd.status import EnvironmentStatus


class Engine(Protocol):
    """What the app needs of the rotation engine (``rotation.KeyManager``), and nothing more."""

    @property
    def environments(self) -> list[str]: ...

    def __contains__(self, environment: object) -> bool: ...

    def signing_key(self, environment: str) -> KeySnapshot: ...

    def verification_keys(self, environment: str) -> list[KeySnapshot]: ...

    def health(self, environment: str) -> tuple[Health, str | None]: ...

    def presigned_for_s(self, environment: str) -> float | None: ...

    def status(self, environment: str) -> EnvironmentStatus: ...

    async def report(
        self, environment: str, key_version: str, status: str, **peer: Any
    ) -> ReportOutcome: ...

    async def budgeted_check(self, environment: str, trigger: Trigger, **fields: Any) -> bool: ...

    async def check(
        self, environment: str, trigger: Trigger, *, force: bool = False, **fields: Any
    ) -> CheckOutcome: ...


class EnvironmentGate:
    """The environment a request names, if it exists and the peer may use it."""

    def __init__(self, engine: Engine, policies: Mapping[str, AccessPolicy | None]) -> None:
        self._engine = engine
        self._policies = policies

    def environment(self, body: dict[str, str], peer: Peer | None) -> str:
        """``body["environment"]``, checked against the policy of ``peer`` (None: admins)."""
        name = body["environment"]
        if name not in self._engine:
            raise BadRequest(
                "unknown_environment", f"no environment {untrusted(name, 64)!r}", status=404
            )
        policy = self._policies[name]
        if peer is not None and policy is not None and not policy.permits(peer):
            raise BadRequest("forbidden", f"this process may not use {name!r}", status=403)
        return name
