"""``sidkeyd import-key --transit``: bring a Smile ID key into Transit, never to show it again.

As Vault's bring-your-own-key procedure specifies: fetch the mount's RSA wrapping key
(``<mount>/wrapping_key``), wrap an ephemeral AES-256 key with RSA-OAEP (SHA-256), wrap the
Smile ID key with that AES key (AES key wrap with padding, RFC 5649), and send both as one
base64 ``ciphertext``: ``<mount>/keys/<name>/import`` (type ``hmac``) for a new key, or
``import_version`` for a rotation of an existing one. The key's bytes are the UTF-8 of the key,
as the local signer uses them, so both compute the same HMAC.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import hvac
import hvac.exceptions as hvac_errors
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding

from sidkeyd.config import EnvironmentConfig, VaultSourceConfig
from sidkeyd.errors import PermanentSourceError
from sidkeyd.keystore import ApiKey
from sidkeyd.sources.vault.client import make_client
from sidkeyd.sources.vault.errors import mapping, translating
from sidkeyd.sources.vault.login import login_method

MIN_WRAPPING_BITS = 2048  # Transit's wrapping key is RSA-4096; a smaller one is not Transit's


@dataclass(frozen=True)
class Imported:
    """What an import made: the key's name, the version now latest, and whether it is new."""

    transit_key: str
    version: int
    created: bool


def wrap_key(public_key_pem: str, key: bytes) -> str:
    """The base64 ``ciphertext`` Transit imports: RSA-OAEP(AES key) + AES-KWP(key)."""
    try:
        public_key = serialization.load_pem_public_key(public_key_pem.encode("ascii"))
    except (ValueError, UnicodeError):  # cryptography's words for a key it cannot read
        raise PermanentSourceError(
            "the wrapping key is not a PEM public key", code="transit_wrapping_key"
        ) from None
    if not isinstance(public_key, rsa.RSAPublicKey) or public_key.key_size < MIN_WRAPPING_BITS:
        raise PermanentSourceError(
            f"the wrapping key is not RSA of at least {MIN_WRAPPING_BITS} bits (Transit's is "
            "4096): the key is not sent under it",
            code="transit_wrapping_key",
        )
    ephemeral = os.urandom(32)
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    wrapped = public_key.encrypt(ephemeral, oaep) + aes_key_wrap_with_padding(ephemeral, key)
    return base64.b64encode(wrapped).decode("ascii")


def import_transit_key(
    source: VaultSourceConfig, environment: EnvironmentConfig, key: ApiKey
) -> Imported:
    """Import ``key`` as the environment's Transit key: a new key, or its next version."""
    client = make_client(source)
    method = login_method(source.auth, source.name)
    held: list[str] = [key.reveal()]  # what to scrub from Vault's words: the key, the token

    def secrets() -> tuple[str, ...]:
        return (*held, *method.credentials())

    try:
        lease = method.login(client, secrets)
        client.token = lease.token.reveal()
        held.append(client.token)
        return _TransitImport(client, environment, secrets).run(key)
    finally:
        client.adapter.close()
        method.forget()


class _TransitImport:
    def __init__(
        self,
        client: hvac.Client,
        environment: EnvironmentConfig,
        secrets: Callable[[], tuple[str, ...]],
    ) -> None:
        self._client = client
        self._mount = environment.transit_mount
        self._name = environment.transit_key or ""
        self._secrets = secrets

    def run(self, key: ApiKey) -> Imported:
        mount, name = self._mount, self._name
        wrapping = self._data("get", f"{mount}/wrapping_key", "reading the wrapping key")
        pem = wrapping.get("public_key")
        if not isinstance(pem, str):
            raise PermanentSourceError(
                f"{mount}/wrapping_key has no public_key", code="transit_wrapping_key"
            )
        created = not self._exists()
        body: dict[str, object] = {
            "ciphertext": wrap_key(pem, key.reveal().encode("utf-8")),
            "hash_function": "SHA256",
        }
        if created:
            body["type"] = "hmac"
        path = f"{mount}/keys/{name}/" + ("import" if created else "import_version")
        self._call("post", path, f"importing into {path}", json=body)
        latest = self._data("get", f"{mount}/keys/{name}", "reading the key").get("latest_version")
        return Imported(name, latest if isinstance(latest, int) else 0, created)

    def _exists(self) -> bool:
        try:
            self._call("get", f"{self._mount}/keys/{self._name}", "reading the key")
        except PermanentSourceError as exc:
            if isinstance(exc.__cause__, hvac_errors.InvalidPath):
                return False
            raise
        return True

    def _data(self, method: str, path: str, doing: str) -> Mapping[str, Any]:
        response = self._call(method, path, doing)
        return mapping(mapping(response, "response").get("data"), doing)

    def _call(self, method: str, path: str, doing: str, **kwargs: Any) -> Any:
        with translating(f"{doing} ({path})", self._secrets):
            return getattr(self._client.adapter, method)(f"/v1/{path}", **kwargs)
