"""Vault / OpenBao Transit as a remote signer: the key is imported there and never read back.

The cheap check reads ``<mount>/keys/<name>``: its ``latest_version`` is the key version
(``"3"``); a new one is a rotation (``import_version``). Each ``TransitSigner`` is pinned to one
version (``key_version`` on every call), so that signatures never mix two keys. Transit answers
``vault:v<N>:<base64>``; Smile ID wants the bare base64, which is what ``sign`` returns.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

import hvac

from sidkeyd.config import EnvironmentConfig
from sidkeyd.errors import InvalidSecretError, PermanentSourceError
from sidkeyd.sources import RemoteKey, Unchanged
from sidkeyd.sources.vault.errors import mapping, translating

_HMAC = re.compile(r"vault:v(?P<version>[0-9]+):(?P<mac>[A-Za-z0-9+/]{43}=)", re.ASCII)


class TransitKeys:
    """The Transit calls of one Vault source, on its client and token."""

    def __init__(
        self,
        client: hvac.Client,
        ensure_token: Callable[[], object],
        secrets: Callable[[], tuple[str, ...]],
    ) -> None:
        self._client = client
        self._ensure_token = ensure_token
        self._secrets = secrets

    def step(self, doing: str) -> AbstractContextManager[None]:
        return translating(doing, self._secrets)

    def check(
        self, environment: EnvironmentConfig, held_version: str | None
    ) -> RemoteKey | Unchanged:
        """The key's ``latest_version``: ``Unchanged`` when it is the one held."""
        mount, name = environment.transit_mount, environment.transit_key or ""
        with self.step(f"reading the transit key {mount}/keys/{name}"):
            response = self._client.adapter.get(f"/v1/{mount}/keys/{name}")
        data = mapping(mapping(response, "response").get("data"), "the transit key")
        if data.get("type") != "hmac":
            raise InvalidSecretError(
                f"transit key {mount}/keys/{name} is of type {data.get('type')!r}, not 'hmac'",
                code="transit_key_type",
            )
        latest = data.get("latest_version")
        if not isinstance(latest, int) or latest < 1:
            raise InvalidSecretError(
                f"transit key {mount}/keys/{name} has no latest_version", code="malformed_payload"
            )
        if held_version == str(latest):
            return Unchanged(str(latest))
        return RemoteKey(TransitSigner(self, mount, name, latest))

    def post(self, path: str, body: dict[str, Any], doing: str) -> dict[str, Any]:
        self._ensure_token()
        with self.step(doing):
            response = self._client.adapter.post(path, json=body)
        return dict(mapping(mapping(response, "response").get("data"), "transit's answer"))


class TransitSigner:
    """One Transit key version (a ``signers.RemoteSigner``)."""

    backend = "transit"

    def __init__(self, keys: TransitKeys, mount: str, name: str, version: int) -> None:
        self._keys = keys
        self._path = f"{mount}/hmac/{name}/sha2-256"
        self._verify_path = f"{mount}/verify/{name}/sha2-256"
        self._number = version
        self.version = str(version)

    def __repr__(self) -> str:
        return f"TransitSigner({self._path!r}, version={self.version!r})"

    def sign(self, messages: Sequence[bytes]) -> list[str]:
        body = {
            "key_version": self._number,
            "batch_input": [{"input": base64.b64encode(m).decode("ascii")} for m in messages],
        }
        data = self._keys.post(f"/v1/{self._path}", body, f"signing with {self._path}")
        results = data.get("batch_results")
        if not isinstance(results, list) or len(results) != len(messages):
            raise PermanentSourceError(
                f"{self._path} answered no batch_results for {len(messages)} inputs",
                code="transit_malformed",
            )
        return [self._bare(result) for result in results]

    def _bare(self, result: object) -> str:
        """``vault:v<N>:<mac>`` of this version → ``<mac>``; anything else is refused."""
        text = result.get("hmac") if isinstance(result, dict) else None
        match = _HMAC.fullmatch(text) if isinstance(text, str) else None
        if match is None or int(match["version"]) != self._number:
            error = result.get("error") if isinstance(result, dict) else None
            raise PermanentSourceError(
                f"{self._path} gave no HMAC of version {self.version}"
                + (f": {str(error)[:200]}" if error else ""),
                code="transit_refused",
            )
        return match["mac"]

    def verify(self, message: bytes, signature: str) -> bool:
        if not _well_formed(signature):
            return False  # not an HMAC-SHA256 in base64: no call needed to refuse it
        body = {
            "input": base64.b64encode(message).decode("ascii"),
            "hmac": f"vault:v{self._number}:{signature}",
        }
        data = self._keys.post(f"/v1/{self._verify_path}", body, f"verifying with {self._path}")
        return data.get("valid") is True


def _well_formed(signature: str) -> bool:
    try:
        return len(base64.b64decode(signature, validate=True)) == 32 and len(signature) == 44
    except (binascii.Error, ValueError):
        return False
