"""The Vault / OpenBao source (``type = "vault"``), in modules along its seams.

``source`` (fetch, close, the two locks), ``auth`` (the token lifecycle and renewer), ``login``
(one piece per auth method), ``kv`` (KV v1/v2 reads), ``client`` (hvac client and TLS) and
``errors`` (the exception table and its translation). The public names are re-exported here.
"""

from sidkeyd.sources.vault.auth import retry_delay
from sidkeyd.sources.vault.errors import ERROR_MAP, REFUSAL_MEANS_ACCESS_LOST, translate
from sidkeyd.sources.vault.source import VaultSource

__all__ = ["ERROR_MAP", "REFUSAL_MEANS_ACCESS_LOST", "VaultSource", "retry_delay", "translate"]
