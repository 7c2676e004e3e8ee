"""The Vault source's hvac client: TLS (CA, client certificate, SNI name) as configured.

Nothing comes from the environment: no proxies or CA bundles (``trust_env``), no
``VAULT_TOKEN`` or ``~/.vault-token``, no ``VAULT_CLIENT_CERT``.
"""

from __future__ import annotations

from typing import Any, cast

import hvac
import hvac.adapters
import requests
import requests.adapters

from sidkeyd.config import VaultSourceConfig


class _ServerNameAdapter(requests.adapters.HTTPAdapter):
    """Sends ``server_name`` as SNI and checks the certificate against it, whatever the URL."""

    def __init__(self, server_name: str) -> None:
        self._server_name = server_name  # set first: HTTPAdapter.__init__ builds the pool
        super().__init__()

    def init_poolmanager(
        self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any
    ) -> None:
        pool_kwargs["server_hostname"] = self._server_name
        pool_kwargs["assert_hostname"] = self._server_name
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)


class _Adapter(hvac.adapters.JSONAdapter):
    """hvac's adapter with exactly the configured client certificate, or none.

    ``hvac.Client`` replaces ``cert=None`` by ``VAULT_CLIENT_CERT`` and ``VAULT_CLIENT_KEY``
    (read from the environment when hvac is imported); this adapter ignores what it passes.
    """

    def __init__(self, *, configured_cert: tuple[str, str] | None, **kwargs: Any) -> None:
        super().__init__(**{**kwargs, "cert": configured_cert})


def make_client(config: VaultSourceConfig) -> hvac.Client:
    """The source's one hvac client: TLS exactly as configured, nothing from the environment."""
    session = requests.Session()
    verify: bool | str = str(config.ca_cert) if config.verify and config.ca_cert else config.verify
    cert: tuple[str, str] | None = None
    if config.client_cert is not None:
        key = config.client_key or config.client_cert
        cert = (str(config.client_cert), str(key))
    session.verify = verify
    session.cert = cert
    session.trust_env = False  # no proxies or CA bundles from the environment
    if config.tls_server_name:
        session.mount("https://", _ServerNameAdapter(config.tls_server_name))
    return hvac.Client(
        url=config.url,
        token="",  # never VAULT_TOKEN or ~/.vault-token implicitly
        verify=verify,
        cert=cert,
        # requests takes float seconds; the stub says int.
        timeout=cast("int", config.timeout.total_seconds()),
        namespace=config.namespace,
        session=session,
        adapter=_Adapter,
        configured_cert=cert,
    )
