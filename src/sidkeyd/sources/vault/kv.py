"""The Vault source's KV reads (v1 and v2) and what a KV v2 version's metadata says.

Versions: KV v2 reports the KV version number (``"3"``); with a held version it reads the
metadata first and returns ``Unchanged`` when ``current_version`` has not moved. KV v1 has no
versions, so the version is a content hash, as in the file source.

A soft-deleted or destroyed version raises ``AccessLostError(code="secret_deleted")``: deleting
the secret is an operator's way to cut hosts off, so the engine keeps the last good key for
``revoke_grace`` (time to undelete a mistake) and then stops signing with it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any, cast

import hvac
import hvac.exceptions as hvac_errors

from sidkeyd.config import EnvironmentConfig, VaultSourceConfig
from sidkeyd.errors import AccessLostError
from sidkeyd.keystore import content_version
from sidkeyd.sources import FetchResult, SecretValue, Unchanged
from sidkeyd.sources.payload import key_from_mapping
from sidkeyd.sources.vault.errors import mapping, translating


class KvReader:
    """Reads one source's KV secrets with the shared hvac client; holds no state of its own."""

    def __init__(
        self,
        config: VaultSourceConfig,
        client: hvac.Client,
        secrets: Callable[[], tuple[str, ...]],
    ) -> None:
        self._config = config
        self._client = client
        self._secrets = secrets

    def _step(self, doing: str) -> AbstractContextManager[None]:
        return translating(doing, self._secrets)

    def read(self, environment: EnvironmentConfig, held_version: str | None) -> FetchResult:
        path = environment.secret.strip("/")
        if self._config.kv_version == 1:
            return self._read_kv1(environment, path, held_version)
        return self._read_kv2(environment, path, held_version)

    def _read_kv1(
        self, environment: EnvironmentConfig, path: str, held_version: str | None
    ) -> FetchResult:
        mount = self._config.mount
        with self._step(f"reading {mount}/{path}"):
            response = self._client.secrets.kv.v1.read_secret(path=path, mount_point=mount)
        data = mapping(mapping(response, "response").get("data"), "secret data")
        api_key, partner_id = key_from_mapping(data, environment)
        version = content_version("sidkeyd-vault-kv1-version", api_key.reveal(), partner_id)
        if version == held_version:
            return Unchanged(version)
        return SecretValue(api_key=api_key, partner_id=partner_id, version=version)

    def _read_kv2(
        self, environment: EnvironmentConfig, path: str, held_version: str | None
    ) -> FetchResult:
        mount = self._config.mount
        kv2 = self._client.secrets.kv.v2
        if environment.version is None and held_version is not None:
            with self._step(f"reading {mount}/metadata/{path}"):
                response = kv2.read_secret_metadata(path=path, mount_point=mount)
            metadata = mapping(mapping(response, "response").get("data"), "metadata")
            current = str(metadata.get("current_version"))
            versions = metadata.get("versions")
            latest = versions.get(current) if isinstance(versions, dict) else None
            if (
                current == held_version
                and isinstance(latest, dict)
                and not _deleted_by(latest, datetime.now(UTC))
                and not latest.get("destroyed")
            ):
                return Unchanged(current)
            # Moved, or deleted (or a deletion_time we cannot read): the data read below is
            # authoritative.
        where = f"{mount}/data/{path}" + (
            f" version {environment.version}" if environment.version is not None else ""
        )
        try:
            with self._step(f"reading {where}"):
                response = kv2.read_secret_version(
                    path=path,
                    version=environment.version,
                    mount_point=mount,
                    # A soft-deleted version comes back as its metadata (not InvalidPath), so
                    # that it can be told apart from a path that never existed.
                    raise_on_deleted_version=False,
                )
        except AccessLostError as exc:
            # hvac returns the metadata of a soft-deleted version, not of a destroyed one.
            response = _metadata_of_missing_version(exc.__cause__)
            if response is None:
                raise
        body = mapping(mapping(response, "response").get("data"), "secret")
        meta = mapping(body.get("metadata"), "secret metadata")
        version = str(meta.get("version"))
        if body.get("data") is None and (meta.get("deletion_time") or meta.get("destroyed")):
            state = "destroyed" if meta.get("destroyed") else "deleted"
            raise AccessLostError(
                f"version {version} of {mount}/{path} is {state}", code="secret_deleted"
            )
        data = mapping(body.get("data"), "secret data")
        api_key, partner_id = key_from_mapping(data, environment)
        if version == held_version:
            return Unchanged(version)
        return SecretValue(api_key=api_key, partner_id=partner_id, version=version)


def _deleted_by(version: Mapping[str, Any], now: datetime) -> bool:
    """Whether a KV v2 version's ``deletion_time`` has come by ``now``.

    With ``delete_version_after`` on the mount or secret, every version carries a deletion time
    in the future: not deleted yet. One that cannot be read counts as passed.
    """
    stamp = version.get("deletion_time")
    if not stamp:
        return False
    try:
        when = datetime.fromisoformat(str(stamp))
    except ValueError:
        return True
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when <= now


def _metadata_of_missing_version(exc: BaseException | None) -> Mapping[str, Any] | None:
    """The 404 body of a deleted or destroyed KV v2 version, which still names the version."""
    if not isinstance(exc, hvac_errors.InvalidPath) or not isinstance(exc.json, dict):
        return None
    data = exc.json.get("data")
    metadata = data.get("metadata") if isinstance(data, dict) else None
    if isinstance(metadata, dict) and (metadata.get("deletion_time") or metadata.get("destroyed")):
        return cast("Mapping[str, Any]", exc.json)
    return None
