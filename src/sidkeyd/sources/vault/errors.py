"""The Vault source's exception table and its translation into ``SourceError``.

Messages carry Vault's own error text with any credential this source holds replaced (through
``redaction.backend_text``), and never a token, secret id or key.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Final, cast

import hvac.exceptions as hvac_errors
import requests.exceptions

from sidkeyd.errors import (
    AccessLostError,
    InvalidSecretError,
    PermanentSourceError,
    SourceError,
    TransientSourceError,
)
from sidkeyd.redaction import backend_text
from sidkeyd.sources.tls import certificate_refused

# Every exception hvac or requests raises at us, mapped to what it means for a key check.
# Looked up along the exception's MRO, so the most specific entry wins; tests/unit checks
# that every ``hvac.exceptions.VaultError`` subclass has its own entry.
ERROR_MAP: Final[Mapping[type[Exception], tuple[type[SourceError], str]]] = {
    hvac_errors.InvalidRequest: (PermanentSourceError, "invalid_request"),  # 400
    hvac_errors.Unauthorized: (AccessLostError, "access_denied"),  # 401
    hvac_errors.Forbidden: (AccessLostError, "access_denied"),  # 403
    hvac_errors.InvalidPath: (AccessLostError, "secret_not_found"),  # 404
    hvac_errors.UnsupportedOperation: (PermanentSourceError, "unsupported_operation"),
    # 412: a performance standby has not caught up yet (eventual consistency): retry.
    hvac_errors.PreconditionFailed: (TransientSourceError, "not_replicated_yet"),
    hvac_errors.RateLimitExceeded: (TransientSourceError, "rate_limited"),  # 429
    hvac_errors.InternalServerError: (TransientSourceError, "server_error"),  # 500
    hvac_errors.VaultNotInitialized: (TransientSourceError, "vault_not_initialized"),  # 501
    hvac_errors.BadGateway: (TransientSourceError, "bad_gateway"),  # 502
    hvac_errors.VaultDown: (TransientSourceError, "vault_unavailable"),  # 503: sealed, standby
    hvac_errors.UnexpectedError: (TransientSourceError, "unexpected_status"),
    hvac_errors.ParamValidationError: (PermanentSourceError, "invalid_parameters"),
    hvac_errors.VaultError: (TransientSourceError, "vault_error"),
    # requests: SSLError is a ConnectionError, so it must be listed (it is more specific).
    # Refined to (PermanentSourceError, "tls_error") when the certificate was refused.
    requests.exceptions.SSLError: (TransientSourceError, "tls_connection_error"),
    requests.exceptions.ConnectTimeout: (TransientSourceError, "timeout"),
    requests.exceptions.Timeout: (TransientSourceError, "timeout"),
    requests.exceptions.ConnectionError: (TransientSourceError, "unreachable"),
    requests.exceptions.RequestException: (TransientSourceError, "request_failed"),
}

# During a login, a refusal means our credentials are no good: this host is cut off...
_LOGIN_REFUSALS: Final = (
    hvac_errors.InvalidRequest,
    hvac_errors.Unauthorized,
    hvac_errors.Forbidden,
    hvac_errors.InvalidPath,
)
# ...with the methods Vault checks by itself. The kubernetes method answers 403 when its
# TokenReview call fails (the Kubernetes API down), and jwt may answer 400 when the IdP's keys
# cannot be fetched: for those a refusal is a permanent error, not lost access.
REFUSAL_MEANS_ACCESS_LOST: Final = frozenset({"approle", "token"})
TRANSLATED: Final = (hvac_errors.VaultError, requests.exceptions.RequestException)


def translate(
    exc: Exception, doing: str, *, login: str | None = None, secrets: tuple[str, ...] = ()
) -> SourceError:
    """The ``SourceError`` for a library exception raised while ``doing`` something.

    ``login`` is the auth method when ``doing`` is a login (or the token lookup standing in for
    one).
    """
    error_type: type[SourceError]
    if login is not None and isinstance(exc, _LOGIN_REFUSALS):
        lost = login in REFUSAL_MEANS_ACCESS_LOST
        error_type, code = (AccessLostError if lost else PermanentSourceError), "auth_failed"
    elif isinstance(exc, requests.exceptions.SSLError) and certificate_refused(exc):
        error_type, code = PermanentSourceError, "tls_error"
    else:
        error_type, code = next(
            (ERROR_MAP[cls] for cls in type(exc).__mro__ if cls in ERROR_MAP),
            (TransientSourceError, "vault_error"),
        )
    return error_type(f"{doing}: {_describe(exc, secrets)}", code=code)


def _describe(exc: Exception, secrets: tuple[str, ...]) -> str:
    if isinstance(exc, hvac_errors.VaultError):
        message = exc.args[0] if exc.args else None
        detail = ", ".join(str(e) for e in exc.errors) if exc.errors else str(message or "")
        status = type(exc).__name__
        text = f"{status} ({detail.strip()})" if detail.strip() else status
    else:
        # requests' messages repeat the URL and the urllib3 internals: the class says enough.
        text = type(exc).__name__
    return backend_text(text, secrets)


@contextmanager
def translating(
    doing: str, secrets: Callable[[], tuple[str, ...]], *, login: str | None = None
) -> Iterator[None]:
    """Translate library errors raised inside into ``SourceError``, naming the step.

    ``secrets()`` is asked at the time of the failure: what to scrub from Vault's words.
    """
    try:
        yield
    except TRANSLATED as exc:
        raise translate(exc, doing, login=login, secrets=secrets()) from exc


def mapping(value: object, what: str) -> Mapping[str, Any]:
    """``value`` as a JSON object, or ``InvalidSecretError(malformed_payload)``."""
    if not isinstance(value, dict):
        raise InvalidSecretError(f"{what} is not a JSON object", code="malformed_payload")
    return cast("Mapping[str, Any]", value)
