"""The file source: a local TOML or JSON file whose top-level tables are secret references.

    ["smileid/sandbox"]
    api_key = "..."
    partner_id = "085"

Re-read on every check; the version is a content hash of the entry.
"""

from __future__ import annotations

import json
import tomllib
from typing import Any

from sidkeyd.config import EnvironmentConfig, FileSourceConfig
from sidkeyd.errors import AccessLostError, InvalidSecretError
from sidkeyd.keystore import content_version
from sidkeyd.sources import FetchResult, SecretValue, Unchanged
from sidkeyd.sources.payload import key_from_mapping


class FileSource:
    def __init__(self, config: FileSourceConfig) -> None:
        self.name = config.name
        self._path = config.path

    def fetch(self, environment: EnvironmentConfig, held_version: str | None) -> FetchResult:
        entries = self._read()
        entry = entries.get(environment.secret)
        if entry is None:
            raise AccessLostError(
                f"{self._path} has no table [{json.dumps(environment.secret)}]",
                code="secret_not_found",
            )
        if not isinstance(entry, dict):
            raise InvalidSecretError(
                f"entry {environment.secret!r} in {self._path} must be a table",
                code="malformed_payload",
            )
        api_key, partner_id = key_from_mapping(entry, environment)
        version = content_version("sidkeyd-file-version", api_key.reveal(), partner_id)
        if version == held_version:
            return Unchanged(version)
        return SecretValue(api_key=api_key, partner_id=partner_id, version=version)

    def _read(self) -> dict[str, Any]:
        try:
            raw = self._path.read_bytes()
        except FileNotFoundError:
            raise AccessLostError(f"{self._path} does not exist", code="secret_not_found") from None
        except OSError as exc:
            raise AccessLostError(
                f"cannot read {self._path}: {exc.strerror}", code="access_denied"
            ) from None
        try:
            text = raw.decode("utf-8")
            data = json.loads(text) if self._path.suffix == ".json" else tomllib.loads(text)
        except (UnicodeDecodeError, ValueError):
            # Parser messages can quote the offending line, which may hold a key: not repeated.
            raise InvalidSecretError(
                f"{self._path} is not valid {'JSON' if self._path.suffix == '.json' else 'TOML'}",
                code="malformed_payload",
            ) from None
        if not isinstance(data, dict):
            raise InvalidSecretError(f"{self._path} must hold a table", code="malformed_payload")
        return data

    def close(self) -> None:
        pass
