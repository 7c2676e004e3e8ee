"""Keys in memory: an immutable snapshot per environment, swapped atomically.

Key material appears nowhere but inside ``ApiKey`` and the pre-keyed ``Signer``; reprs show a
fingerprint and the version only.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from sidkeyd.held import HeldSecret
from sidkeyd.signing import Signer

if TYPE_CHECKING:
    from sidkeyd.presign import RemoteSigning

_FINGERPRINT_PREFIX = b"sidkeyd-fingerprint-v1\x00"


def fingerprint(secret: str) -> str:
    """First 12 hex of SHA-256 over a fixed prefix and the key: names a key, reveals nothing."""
    return hashlib.sha256(_FINGERPRINT_PREFIX + secret.encode("utf-8")).hexdigest()[:12]


# Content-hash versions are shown to every peer (each signature names its key version), so a
# fast hash of the key would be an offline guessing oracle: scrypt makes each guess cost ~50 ms
# and 16 MiB. The salt is fixed so that every host names the same key the same way.
_VERSION_SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 8}
_version_cache: dict[bytes, str] = {}  # fast digest -> version: a check re-reads every minute
_VERSION_CACHE_SIZE = 64


def content_version(purpose: str, api_key: str, partner_id: str | None) -> str:
    """A stable version for a secret that has none of its own (file source, Vault KV v1)."""
    material = b"\x00".join(
        (purpose.encode(), api_key.encode("utf-8"), (partner_id or "").encode("utf-8"))
    )
    cache_key = hashlib.sha256(material).digest()  # in memory only, never shown
    version = _version_cache.get(cache_key)
    if version is None:
        digest = hashlib.scrypt(material, salt=b"sidkeyd-content-version-v1", **_VERSION_SCRYPT)
        version = "scrypt:" + digest.hex()
        if len(_version_cache) >= _VERSION_CACHE_SIZE:
            _version_cache.clear()
        _version_cache[cache_key] = version
    return version


class ApiKey(HeldSecret):
    """Key material on its way from a source to the store. Never printed, never pickled."""

    __slots__ = ("fingerprint",)

    def __init__(self, value: str) -> None:
        super().__init__(value)
        self.fingerprint = fingerprint(value)

    def __repr__(self) -> str:
        return f"ApiKey(fingerprint={self.fingerprint!r})"

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class KeySnapshot:
    """Everything the sign path needs for one environment, fixed at load time."""

    environment: str
    partner_id: str
    version: str
    fingerprint: str
    loaded_at: datetime
    served_by: str | None
    loaded_epoch: float
    # The local key (signer = "local"), or None when a remote signer holds it (``remote``).
    signer: Signer | None = field(repr=False)
    api_key: ApiKey | None = field(repr=False)
    # `"partner_id": ..., "environment": ..., "key_version": ...` pre-encoded for responses.
    json_fields: bytes = field(repr=False, default=b"")
    remote: RemoteSigning | None = None

    @classmethod
    def create(
        cls,
        *,
        environment: str,
        partner_id: str,
        version: str,
        api_key: ApiKey,
        loaded_at: datetime,
        served_by: str | None = None,
    ) -> KeySnapshot:
        return cls(
            environment=environment,
            partner_id=partner_id,
            version=version,
            fingerprint=api_key.fingerprint,
            loaded_at=loaded_at,
            served_by=served_by,
            loaded_epoch=loaded_at.timestamp(),
            signer=Signer(api_key.reveal()),
            api_key=api_key,
            json_fields=_json_fields(partner_id, environment, version),
        )

    @classmethod
    def for_remote(
        cls,
        *,
        environment: str,
        partner_id: str,
        remote: RemoteSigning,
        loaded_at: datetime,
        served_by: str | None = None,
    ) -> KeySnapshot:
        """A key version that a backend holds and signs with: no key material here."""
        version = remote.signer.version
        return cls(
            environment=environment,
            partner_id=partner_id,
            version=version,
            fingerprint=fingerprint(f"{remote.signer.backend}:{environment}:{version}"),
            loaded_at=loaded_at,
            served_by=served_by,
            loaded_epoch=loaded_at.timestamp(),
            signer=None,
            api_key=None,
            json_fields=_json_fields(partner_id, environment, version),
            remote=remote,
        )


def _json_fields(partner_id: str, environment: str, version: str) -> bytes:
    fields = (
        f'"partner_id": {json.dumps(partner_id)}, "environment": {json.dumps(environment)}, '
        f'"key_version": {json.dumps(version)}'
    )
    return fields.encode("utf-8")


@dataclass(frozen=True, slots=True)
class RetiredKey:
    snapshot: KeySnapshot
    retired_at: datetime


@dataclass(frozen=True, slots=True)
class HeldToken:
    """A Smile ID V3 token, minted with one key version (``HeldSecret``: never printed)."""

    token: HeldSecret
    key_version: str
    issued_at: float  # epoch seconds
    expires_at: float | None  # the JWT's ``exp``; None when it has none: served once


class KeyStore:
    """The only place keys (and the V3 tokens minted with them) are held.

    Accessed from the event loop thread only. A token belongs to the key it was minted with:
    replacing or dropping an environment's key drops its token in the same step.
    """

    def __init__(self) -> None:
        self._current: dict[str, KeySnapshot] = {}
        self._previous: dict[str, RetiredKey] = {}
        self._tokens: dict[str, HeldToken] = {}
        self._secrets: tuple[str, ...] | None = None  # secrets(), until what is held changes

    def get(self, environment: str) -> KeySnapshot | None:
        return self._current.get(environment)

    def previous(self, environment: str) -> RetiredKey | None:
        return self._previous.get(environment)

    def put(self, snapshot: KeySnapshot, now: datetime) -> KeySnapshot | None:
        """Swap in ``snapshot``; the one it replaces is kept as the previous key."""
        self._secrets = None
        old = self._current.get(snapshot.environment)
        self._current[snapshot.environment] = snapshot
        self._tokens.pop(snapshot.environment, None)  # minted with the key just replaced
        if old is not None and old.version != snapshot.version:
            self._previous[snapshot.environment] = RetiredKey(old, now)
        return old

    def drop(self, environment: str) -> KeySnapshot | None:
        """Forget an environment's keys (revoked): current and previous."""
        self._secrets = None
        self._previous.pop(environment, None)
        self._tokens.pop(environment, None)
        return self._current.pop(environment, None)

    def token(self, environment: str) -> HeldToken | None:
        return self._tokens.get(environment)

    def put_token(self, environment: str, token: HeldToken) -> bool:
        """Hold ``token`` unless the key it was minted with is no longer current."""
        current = self._current.get(environment)
        if current is None or current.version != token.key_version:
            return False
        self._tokens[environment] = token
        self._secrets = None
        return True

    def drop_token(self, environment: str) -> HeldToken | None:
        self._secrets = None
        return self._tokens.pop(environment, None)

    def secrets(self) -> tuple[str, ...]:
        """Raw key material and tokens held right now: only for the log redactor.

        Built when what is held changes, not per log line (the redactor asks for every one).
        """
        if self._secrets is None:
            keys = [*self._current.values(), *(r.snapshot for r in self._previous.values())]
            held = [k.api_key.reveal() for k in keys if k.api_key is not None]
            held += [t.token.reveal() for t in self._tokens.values()]
            self._secrets = tuple(s for s in held if s)
        return self._secrets
