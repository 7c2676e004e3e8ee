"""Who computes an environment's HMAC: the ``RemoteSigner`` protocol.

``signer = "local"`` (the default) is ``signing.Signer``: a pre-keyed HMAC of the key read from
the source, computed on the event loop; that path is unchanged. A remote signer (Vault or
OpenBao Transit: ``sources/vault/transit.py``; AWS KMS: ``sources/aws/kms.py``) never lets the
key out of its backend: each call is a network round trip, so
its methods block and run in the daemon's signing thread pool (``presign.RemoteSigning``), and
requests without a caller's timestamp are answered from a table presigned ahead of need.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class RemoteSigner(Protocol):
    """One key version held by a backend. Blocking; raises only ``errors.SourceError``."""

    backend: str  # "transit": named in refusals and logs
    version: str  # the key version every call is pinned to (never "latest")

    def sign(self, messages: Sequence[bytes]) -> list[str]:
        """The bare base64 HMAC-SHA256 of each message, in order, in as few calls as it can."""
        ...

    def verify(self, message: bytes, signature: str) -> bool:
        """Whether ``signature`` is this key version's HMAC of ``message``."""
        ...
