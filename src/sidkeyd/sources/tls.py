"""TLS failures, told apart the same way for every backend."""

from __future__ import annotations

import re
from typing import Final

# A TLS failure about the certificate (untrusted, expired, another name) stays until someone
# fixes it; any other (a reset or EOF during the handshake) usually goes away on its own.
# Matched on the exception's text because botocore words every SSLError "SSL validation
# failed" and requests wraps urllib3's: hence the OpenSSL and Python texts.
_CERTIFICATE_REFUSED: Final = re.compile(
    r"certificate[ _]verify[ _]failed|hostname mismatch|ip address mismatch|doesn't match",
    re.IGNORECASE,
)


def certificate_refused(exc: BaseException) -> bool:
    """Whether a TLS exception says the peer's certificate was refused (a permanent error)."""
    return _CERTIFICATE_REFUSED.search(str(exc)) is not None
