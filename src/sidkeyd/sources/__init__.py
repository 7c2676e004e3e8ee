"""Where keys come from: the ``Source`` protocol and the factory that builds one per config.

A source is blocking (boto3 and hvac are): the rotation engine calls it off the event loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from sidkeyd.config import EnvironmentConfig, SourceConfig
from sidkeyd.keystore import ApiKey
from sidkeyd.signers import RemoteSigner


@dataclass(frozen=True, slots=True)
class SecretValue:
    """A fresh read: the key, the partner id if the secret carries one, and its version."""

    api_key: ApiKey
    partner_id: str | None
    version: str
    served_by: str | None = None  # e.g. the AWS region that answered


@dataclass(frozen=True, slots=True)
class Unchanged:
    """A cheap check found the backend still at the version held."""

    version: str
    served_by: str | None = None


@dataclass(frozen=True, slots=True)
class RemoteKey:
    """A key version a backend holds and signs with (``signer`` is not "local"): no key read."""

    signer: RemoteSigner
    served_by: str | None = None

    @property
    def version(self) -> str:
        return self.signer.version


FetchResult = SecretValue | Unchanged | RemoteKey


class Source(Protocol):
    """One configured backend. Implementations raise only ``sidkeyd.errors.SourceError``."""

    name: str

    def fetch(self, environment: EnvironmentConfig, held_version: str | None) -> FetchResult:
        """Read the environment's key, blocking.

        With ``held_version`` set, a source may check cheaply and return ``Unchanged`` if the
        backend is still at that version. ``None`` (first load, forced check) reads in full.
        """
        ...

    def close(self) -> None:
        """Release clients and background resources."""
        ...


@runtime_checkable
class WatchingSource(Protocol):
    """A source that can also be told of changes (e.g. AWS events through SQS)."""

    def watch(self, on_change: Callable[[str], None]) -> None:
        """Start watching in the background; call ``on_change(secret_id)`` from any thread."""
        ...

    def matches(self, secret: str, changed: str) -> bool:
        """Whether a change to ``changed`` (a name or an ARN...) concerns the ``secret`` held."""
        ...


def build_source(config: SourceConfig) -> Source:
    """Build the source for ``config``; the backend libraries are imported only when used."""
    if config.type == "file":
        from sidkeyd.sources.file import FileSource

        return FileSource(config)
    if config.type == "aws":
        from sidkeyd.sources.aws import AwsSource

        return AwsSource(config)
    from sidkeyd.sources.vault import VaultSource

    return VaultSource(config)
