"""The status contract, written once: what ``GET /v1/status`` says about each environment.

The engine produces a frozen ``EnvironmentStatus`` per environment; the app serialises it with
``to_json`` (reduced for non-admins); the client and the CLI read it back with ``from_json``.
Standard library only: ``sidkeyd.client`` imports it.

Fields (docs/protocol.md): ``health`` and ``reason``; ``source``; the key in use
(``partner_id``, ``key_version``, ``fingerprint``, ``served_by``, ``loaded_at``,
``key_age_s``); the checks (``last_success_at``, ``last_attempt_at``, ``next_check_at``,
``consecutive_failures``, ``last_error``). Non-admins get neither the reason nor the
fingerprint nor the last error's reason and time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any


def iso(value: datetime | None) -> str | None:
    """UTC ISO 8601 with ``Z``, as every time in the status."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None


@dataclass(frozen=True)
class ErrorStatus:
    kind: str  # "transient" or "permanent"
    code: str
    reason: str | None = None  # admins only
    at: str | None = None  # admins only

    def to_json(self, *, detailed: bool) -> dict[str, str | None]:
        out: dict[str, str | None] = {"kind": self.kind, "code": self.code}
        if detailed:
            out.update(reason=self.reason, at=self.at)
        return out


@dataclass(frozen=True)
class EnvironmentStatus:
    environment: str
    health: str  # "healthy", "degraded" or "unavailable"
    reason: str | None
    source: str
    partner_id: str | None
    key_version: str | None
    fingerprint: str | None
    served_by: str | None
    loaded_at: str | None
    key_age_s: int | None
    last_success_at: str | None
    last_attempt_at: str | None
    next_check_at: str | None
    consecutive_failures: int
    last_error: ErrorStatus | None
    # Smile ID V3 (environments with smileid/smileid_url): the held token's expiry and the
    # last failure to get one (kind "token"); never the token.
    token_expires_at: str | None = None
    token_last_error: ErrorStatus | None = None

    def to_json(self, *, detailed: bool) -> dict[str, Any]:
        return {
            "health": self.health,
            "reason": self.reason if detailed else None,
            "source": self.source,
            "partner_id": self.partner_id,
            "key_version": self.key_version,
            "fingerprint": self.fingerprint if detailed else None,
            "served_by": self.served_by,
            "loaded_at": self.loaded_at,
            "key_age_s": self.key_age_s,
            "last_success_at": self.last_success_at,
            "last_attempt_at": self.last_attempt_at,
            "next_check_at": self.next_check_at,
            "consecutive_failures": self.consecutive_failures,
            "last_error": self.last_error.to_json(detailed=detailed) if self.last_error else None,
            "token_expires_at": self.token_expires_at,
            "token_last_error": self.token_last_error.to_json(detailed=detailed)
            if self.token_last_error
            else None,
        }

    @classmethod
    def from_json(cls, environment: str, data: dict[str, Any]) -> EnvironmentStatus:
        """Read back what ``to_json`` wrote (fields a reduced view lacks are None)."""
        error = data.get("last_error")
        token_error = data.get("token_last_error")
        return cls(
            environment=environment,
            health=data["health"],
            reason=data.get("reason"),
            source=data["source"],
            partner_id=data.get("partner_id"),
            key_version=data.get("key_version"),
            fingerprint=data.get("fingerprint"),
            served_by=data.get("served_by"),
            loaded_at=data.get("loaded_at"),
            key_age_s=data.get("key_age_s"),
            last_success_at=data.get("last_success_at"),
            last_attempt_at=data.get("last_attempt_at"),
            next_check_at=data.get("next_check_at"),
            consecutive_failures=int(data.get("consecutive_failures", 0)),
            last_error=ErrorStatus(
                error["kind"], error["code"], error.get("reason"), error.get("at")
            )
            if error
            else None,
            token_expires_at=data.get("token_expires_at"),
            token_last_error=ErrorStatus(
                token_error["kind"], token_error["code"], token_error.get("reason"), None
            )
            if token_error
            else None,
        )

    def lines(self) -> list[str]:
        """The human-readable view ``sidkeyd status`` prints."""
        out = [f"{self.environment}: {self.health}" + (f" ({self.reason})" if self.reason else "")]
        for label, value in (
            ("partner id", self.partner_id),
            ("key version", self.key_version),
            ("fingerprint", self.fingerprint),
            ("source", self.source),
            ("served by", self.served_by),
            ("loaded at", self.loaded_at),
            ("last success", self.last_success_at),
            ("next check", self.next_check_at),
            ("token until", self.token_expires_at),
        ):
            if value is not None:
                out.append(f"  {label:<13}{value}")
        error = self.last_error
        described = "none"
        if error is not None:
            described = f"{error.kind} {error.code}" + (f": {error.reason}" if error.reason else "")
        out.append(f"  last error   {described}")
        if self.token_last_error is not None:
            out.append(f"  token error  {self.token_last_error.code}")
        return out
