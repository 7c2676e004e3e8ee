"""The Vault source: HashiCorp Vault or OpenBao KV (v1 or v2) through hvac.

One hvac client per source, shared by the KV reads (``kv.py``) and the token lifecycle
(``auth.py``), which own a lock each: a fetch never waits behind a renewal's network call, nor
a renewal behind a read; a fetch waits for the token lock only when it needs a token replaced
(none yet, expired, or refused with a 403). Lock order: read lock, then token lock.

A fetch or renewal in progress when ``close()`` is called stops before its next step
(``source_closed``), so that shutdown does not wait for all of its calls.
"""

from __future__ import annotations

import threading

import hvac.exceptions as hvac_errors

from sidkeyd.config import EnvironmentConfig, VaultSourceConfig
from sidkeyd.errors import AccessLostError, TransientSourceError
from sidkeyd.sources import FetchResult
from sidkeyd.sources.vault.auth import TokenLifecycle
from sidkeyd.sources.vault.client import make_client
from sidkeyd.sources.vault.kv import KvReader
from sidkeyd.sources.vault.login import login_method
from sidkeyd.sources.vault.transit import TransitKeys


class VaultSource:
    """A ``Source`` reading KV secrets from Vault or OpenBao."""

    def __init__(self, config: VaultSourceConfig) -> None:
        self.name = config.name
        self._config = config
        # Set by close() before it takes any lock: a fetch or renewal under way stops at its
        # next step instead of making every remaining call first.
        self._closing = threading.Event()
        self._client = make_client(config)  # thread-safe for concurrent requests (urllib3 pool)
        self._tokens = TokenLifecycle(
            config.name, login_method(config.auth, config.name), self._client, self._closing
        )
        self._kv = KvReader(config, self._client, self._tokens.secrets)
        self._transit = TransitKeys(self._client, self._tokens.ensure_token, self._tokens.secrets)
        # The read lock: one fetch at a time per source (the engine may call fetch for several
        # environments at once from its thread pool), covering its token check, read and 403
        # recovery. The renewer never takes it.
        self._read_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"VaultSource(name={self.name!r}, url={self._config.url!r})"

    def fetch(self, environment: EnvironmentConfig, held_version: str | None) -> FetchResult:
        with self._read_lock:
            self._refuse_if_closing()
            lease = self._tokens.ensure_token()
            read = self._transit.check if environment.signer == "transit" else self._kv.read
            try:
                return read(environment, held_version)
            except AccessLostError as exc:
                if not isinstance(exc.__cause__, hvac_errors.Forbidden):
                    raise
                # 403: a policy denial, or the token itself is refused (revoked, expired or
                # replaced), in which case read once more with a new one.
                if not self._tokens.recover_from_denial(lease):
                    raise
            return read(environment, held_version)

    def close(self) -> None:
        self._closing.set()
        self._tokens.stop()
        with self._read_lock:
            self._client.adapter.close()
            self._tokens.forget()

    def _refuse_if_closing(self) -> None:
        if self._closing.is_set():
            raise TransientSourceError(f"source {self.name!r} is closed", code="source_closed")
