"""The Vault source's translation of hvac and requests exceptions into sidkeyd's errors."""

from __future__ import annotations

import inspect

import hvac.exceptions
import pytest
import requests.exceptions

from sidkeyd.errors import (
    AccessLostError,
    PermanentSourceError,
    SourceError,
    TransientSourceError,
)
from sidkeyd.sources.vault import ERROR_MAP, retry_delay, translate

VAULT_ERRORS = sorted(
    (
        cls
        for _name, cls in inspect.getmembers(hvac.exceptions, inspect.isclass)
        if issubclass(cls, hvac.exceptions.VaultError)
    ),
    key=lambda cls: cls.__name__,
)


@pytest.mark.parametrize("cls", VAULT_ERRORS, ids=lambda cls: cls.__name__)
def test_every_hvac_exception_has_its_own_mapping(cls: type[Exception]) -> None:
    """A new exception class in hvac.exceptions must be mapped on purpose, not by inheritance."""
    assert cls in ERROR_MAP


def test_hvac_exceptions_were_found() -> None:
    """The scan above saw the module's classes (guards against an empty parametrization)."""
    assert hvac.exceptions.VaultDown in VAULT_ERRORS
    assert hvac.exceptions.VaultError in VAULT_ERRORS


@pytest.mark.parametrize(
    ("status", "expected_type", "expected_code"),
    [
        (400, PermanentSourceError, "invalid_request"),
        (401, AccessLostError, "access_denied"),
        (403, AccessLostError, "access_denied"),
        (404, AccessLostError, "secret_not_found"),
        (429, TransientSourceError, "rate_limited"),
        (500, TransientSourceError, "server_error"),
        (501, TransientSourceError, "vault_not_initialized"),
        (502, TransientSourceError, "bad_gateway"),
        (503, TransientSourceError, "vault_unavailable"),
        (504, TransientSourceError, "unexpected_status"),
    ],
)
def test_status_codes_translate_by_meaning(
    status: int, expected_type: type[SourceError], expected_code: str
) -> None:
    """Each HTTP status hvac raises for becomes a transient or permanent error with a code."""
    exc = hvac.exceptions.VaultError.from_status(status, "boom", method="GET", url="/v1/x")

    error = translate(exc, "reading secret/data/x")

    assert (expected_type, expected_code) == (type(error), error.code)


@pytest.mark.parametrize(
    ("exc", "expected_type", "expected_code"),
    [
        (requests.exceptions.ConnectionError("refused"), TransientSourceError, "unreachable"),
        (requests.exceptions.ConnectTimeout("slow"), TransientSourceError, "timeout"),
        (requests.exceptions.ReadTimeout("slow"), TransientSourceError, "timeout"),
        (requests.exceptions.InvalidJSONError("html"), TransientSourceError, "request_failed"),
        (hvac.exceptions.ParamValidationError("x"), PermanentSourceError, "invalid_parameters"),
        (hvac.exceptions.PreconditionFailed("x"), TransientSourceError, "not_replicated_yet"),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else None,
)
def test_library_exceptions_translate_by_meaning(
    exc: Exception, expected_type: type[SourceError], expected_code: str
) -> None:
    """Connection, timeout and TLS failures from requests are mapped like hvac's."""
    error = translate(exc, "reading secret/data/x")

    assert (expected_type, expected_code) == (type(error), error.code)


@pytest.mark.parametrize("method", ["approle", "token"])
@pytest.mark.parametrize("status", [400, 401, 403, 404])
def test_refused_login_is_auth_failed(status: int, method: str) -> None:
    """During an approle login or token lookup, a refusal means this host is cut off."""
    exc = hvac.exceptions.VaultError.from_status(status, "invalid role or secret ID")

    error = translate(exc, f"{method} login", login=method)

    assert (AccessLostError, "auth_failed") == (type(error), error.code)


@pytest.mark.parametrize("method", ["kubernetes", "jwt"])
@pytest.mark.parametrize("status", [400, 401, 403, 404])
def test_refused_kubernetes_or_jwt_login_is_permanent(status: int, method: str) -> None:
    """These methods also refuse when Vault cannot check the JWT (K8s API down, IdP keys
    unreachable): auth_failed, permanent but not lost access."""
    exc = hvac.exceptions.VaultError.from_status(status, "permission denied")

    error = translate(exc, f"{method} login", login=method)

    assert (PermanentSourceError, "auth_failed") == (type(error), error.code)


def test_sealed_during_login_stays_transient() -> None:
    """A sealed Vault during a login is still a transient outage, not lost access."""
    exc = hvac.exceptions.VaultDown("Vault is sealed")

    error = translate(exc, "approle login", login="approle")

    assert (TransientSourceError, "vault_unavailable") == (type(error), error.code)


def test_message_names_the_step_and_vaults_reason() -> None:
    """The reason says what was being done and what Vault answered."""
    exc = hvac.exceptions.Forbidden(errors=["1 error occurred:\n\t* permission denied\n\n"])

    error = translate(exc, "reading secret/data/smileid/sandbox")

    assert (
        "reading secret/data/smileid/sandbox: Forbidden (1 error occurred: * permission denied)"
        == error.reason
    )


def test_message_never_repeats_a_held_credential() -> None:
    """Anything Vault echoes back that matches a credential held is replaced."""
    secret_id = "6d4b1f0c-aaaa-bbbb-cccc-000000000000"
    exc = hvac.exceptions.InvalidRequest(errors=[f"invalid secret id {secret_id}"])

    error = translate(exc, "approle login", login="approle", secrets=(secret_id,))

    assert secret_id not in str(error)
    assert "[REDACTED]" in error.reason


def test_requests_messages_are_not_repeated() -> None:
    """requests' messages carry URLs and urllib3 internals: only the class name is kept."""
    exc = requests.exceptions.ConnectionError("HTTPConnectionPool(host='x'): Max retries exceeded")

    error = translate(exc, "reading secret/data/x")

    assert "reading secret/data/x: ConnectionError" == error.reason


@pytest.mark.parametrize(
    ("failures", "expected"), [(1, 1.0), (2, 2.0), (5, 16.0), (7, 60.0), (5000, 60.0)]
)
def test_retry_after_expiry_is_plain_exponential_backoff(failures: int, expected: float) -> None:
    """Once the token has expired, a failing renewer backs off 1s doubling to 60s, not 1s."""
    assert expected == retry_delay(failures, remaining=-30.0)


def test_retry_while_valid_is_never_later_than_halfway_to_expiry() -> None:
    """While the token is valid, the retry comes no later than halfway to its expiry."""
    assert 5.0 == retry_delay(10, remaining=10.0)


def test_retry_while_valid_is_never_sooner_than_a_second() -> None:
    """A token about to expire does not make the renewer retry in a busy loop."""
    assert 1.0 == retry_delay(10, remaining=0.5)


@pytest.mark.parametrize(
    "message",
    [
        "Caused by SSLError(SSLCertVerificationError(1, '[SSL: CERTIFICATE_VERIFY_FAILED] "
        "certificate verify failed: unable to get local issuer certificate (_ssl.c:1006)'))",
        "Caused by SSLError(SSLCertVerificationError(1, '[SSL: CERTIFICATE_VERIFY_FAILED] "
        "certificate verify failed: IP address mismatch, certificate is not valid for "
        "'127.0.0.1'. (_ssl.c:1006)'))",
        "Caused by SSLError(CertificateError(\"hostname 'vault.a' doesn't match 'vault.b'\"))",
    ],
)
def test_refused_certificate_is_permanent(message: str) -> None:
    """An untrusted certificate or one for another name will not fix itself: tls_error."""
    error = translate(requests.exceptions.SSLError(message), "reading secret/data/x")

    assert (PermanentSourceError, "tls_error") == (type(error), error.code)


def test_other_tls_failure_is_transient() -> None:
    """A handshake cut short (EOF, reset) usually goes away: transient."""
    exc = requests.exceptions.SSLError(
        "Caused by SSLError(SSLEOFError(8, '[SSL: UNEXPECTED_EOF_WHILE_READING] EOF occurred "
        "in violation of protocol (_ssl.c:1006)'))"
    )

    error = translate(exc, "reading secret/data/x")

    assert (TransientSourceError, "tls_connection_error") == (type(error), error.code)
