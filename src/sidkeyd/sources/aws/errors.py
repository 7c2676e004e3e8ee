"""The AWS source's error tables and their translation into ``SourceError``.

Every botocore error is translated at the boundary through the tables below; messages carry
AWS's error code and message (through ``redaction.backend_text``: a hostile or buggy endpoint
may put secret text in them), never a payload.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

import botocore.exceptions as bx

from sidkeyd.errors import (
    AccessLostError,
    PermanentSourceError,
    SourceError,
    TransientSourceError,
)
from sidkeyd.redaction import backend_text
from sidkeyd.sources.tls import certificate_refused

_T = TransientSourceError
_P = PermanentSourceError
_A = AccessLostError

# AWS error codes (``ClientError.response["Error"]["Code"]``) -> (sidkeyd error class, code).
# Codes not listed fall back on the HTTP status: 5xx and 429 are transient, the rest permanent.
ERROR_CODES: Final[Mapping[str, tuple[type[SourceError], str]]] = MappingProxyType(
    {
        # Throttling: botocore's own list of throttling codes, plus Secrets Manager's quota.
        "Throttling": (_T, "throttled"),
        "ThrottlingException": (_T, "throttled"),
        "ThrottledException": (_T, "throttled"),
        "RequestThrottledException": (_T, "throttled"),
        "TooManyRequestsException": (_T, "throttled"),
        "ProvisionedThroughputExceededException": (_T, "throttled"),
        "TransactionInProgressException": (_T, "throttled"),
        "RequestLimitExceeded": (_T, "throttled"),
        "BandwidthLimitExceeded": (_T, "throttled"),
        "LimitExceededException": (_T, "throttled"),
        "RequestThrottled": (_T, "throttled"),
        "SlowDown": (_T, "throttled"),
        "PriorRequestNotComplete": (_T, "throttled"),
        "EC2ThrottledException": (_T, "throttled"),
        # The service side failed.
        "InternalServiceError": (_T, "service_error"),
        "InternalFailure": (_T, "service_error"),
        "InternalError": (_T, "service_error"),
        "ServiceUnavailable": (_T, "service_unavailable"),
        "ServiceUnavailableException": (_T, "service_unavailable"),
        "RequestTimeout": (_T, "service_timeout"),
        "RequestTimeoutException": (_T, "service_timeout"),
        # This host is cut off from the secret.
        "AccessDeniedException": (_A, "access_denied"),
        "AccessDenied": (_A, "access_denied"),
        # Refined to "version_stage_not_found" when AWS says the staging label is missing.
        "ResourceNotFoundException": (_A, "secret_not_found"),
        # The secret exists but cannot be read as configured.
        "DecryptionFailure": (_P, "decryption_failed"),
        "InvalidParameterException": (_P, "invalid_parameter"),
        "ValidationException": (_P, "invalid_parameter"),
        # Refined to (AccessLostError, "secret_deleted") when the secret is marked for deletion.
        "InvalidRequestException": (_P, "invalid_request"),
        # The credentials are refused.
        "UnrecognizedClientException": (_P, "credentials_invalid"),
        "InvalidClientTokenId": (_P, "credentials_invalid"),
        "InvalidSignatureException": (_P, "credentials_invalid"),
        "SignatureDoesNotMatch": (_P, "credentials_invalid"),
        "IncompleteSignature": (_P, "credentials_invalid"),
        "MissingAuthenticationToken": (_P, "credentials_invalid"),
        "AuthFailure": (_P, "credentials_invalid"),
        "ExpiredToken": (_P, "credentials_expired"),
        "ExpiredTokenException": (_P, "credentials_expired"),
        "RequestExpired": (_P, "clock_skew"),
        # KMS (the kms signer): the key is cut off or unusable. KMSInvalidMacException is no
        # error: KmsSigner.verify answers it as an invalid signature.
        "NotFoundException": (_A, "key_not_found"),
        "DisabledException": (_A, "key_disabled"),
        "KMSInvalidStateException": (_A, "key_disabled"),
        "InvalidKeyUsageException": (_P, "kms_key_type"),
        "KeyUnavailableException": (_T, "service_unavailable"),
        "DependencyTimeoutException": (_T, "service_timeout"),
        "KMSInternalException": (_T, "service_error"),
    }
)

# Secrets Manager error shapes that sidkeyd leaves to the HTTP-status fallback, and why.
DELIBERATELY_UNMAPPED: Final[Mapping[str, str]] = MappingProxyType(
    {
        "EncryptionFailure": "raised only by writes (CreateSecret, PutSecretValue); sidkeyd reads",
        "InvalidNextTokenException": "raised only by paginated List* calls; sidkeyd makes none",
        "MalformedPolicyDocumentException": "raised only by PutResourcePolicy and CreateSecret",
        "PreconditionNotMetException": "raised only by writes and DeleteSecret",
        "PublicPolicyException": "raised only by PutResourcePolicy",
        "ResourceExistsException": "raised only by CreateSecret and PutSecretValue",
    }
)

# botocore's own exceptions (no HTTP answer, or no request sent), most specific first.
BOTOCORE_ERRORS: Final[tuple[tuple[type[Exception], type[SourceError], str], ...]] = (
    (bx.ConnectTimeoutError, _T, "connect_timeout"),
    (bx.ReadTimeoutError, _T, "read_timeout"),
    # Refined to (PermanentSourceError, "tls_error") when the certificate was refused.
    (bx.SSLError, _T, "tls_connection_error"),
    (bx.ProxyConnectionError, _T, "proxy_unreachable"),
    (bx.EndpointConnectionError, _T, "endpoint_unreachable"),
    (bx.ConnectionClosedError, _T, "connection_closed"),
    (bx.ResponseStreamingError, _T, "connection_closed"),
    (bx.ConnectionError, _T, "connection_error"),
    (bx.HTTPClientError, _T, "connection_error"),
    (bx.NoCredentialsError, _P, "no_credentials"),
    (bx.PartialCredentialsError, _P, "partial_credentials"),
    (bx.CredentialRetrievalError, _P, "credentials_unavailable"),
    (bx.TokenRetrievalError, _P, "credentials_unavailable"),
    (bx.SSOError, _P, "credentials_unavailable"),
    (bx.ProfileNotFound, _P, "profile_not_found"),
    (bx.NoRegionError, _P, "no_region"),
    (bx.InvalidRegionError, _P, "invalid_region"),
    (bx.ParamValidationError, _P, "invalid_parameter"),
    (bx.BotoCoreError, _T, "aws_error"),
)


# AWS error codes are CamelCase words (AccessDeniedException); a code the tables do not know
# is shown only if it has that shape, digits excluded: a hex or base64 key fits any looser one.
_AWS_CODE = re.compile(r"[A-Z][A-Za-z_.]{0,63}")


def translate_error(exc: Exception, region: str) -> SourceError:
    """The ``SourceError`` for a botocore exception raised while calling ``region``."""
    if isinstance(exc, bx.ClientError):
        return _translate_client_error(exc, region)
    if isinstance(exc, bx.SSLError) and certificate_refused(exc):
        return PermanentSourceError(f"{region}: {backend_text(str(exc))}", code="tls_error")
    for exc_type, error_type, code in BOTOCORE_ERRORS:
        if isinstance(exc, exc_type):
            return error_type(f"{region}: {backend_text(str(exc))}", code=code)
    return TransientSourceError(f"{region}: unexpected {type(exc).__name__}", code="aws_error")


def _translate_client_error(exc: bx.ClientError, region: str) -> SourceError:
    error = exc.response.get("Error", {})
    aws_code = str(error.get("Code", "Unknown"))
    if aws_code not in ERROR_CODES and not _AWS_CODE.fullmatch(aws_code):
        aws_code = "Unknown"  # the endpoint's words: shown only if code-shaped
    aws_message = backend_text(str(error.get("Message", "")))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
    operation = exc.operation_name
    reason = f"{region}: {operation} failed with {aws_code}: {aws_message}".rstrip(": ")
    mapped = ERROR_CODES.get(aws_code)
    if mapped is None:
        if status >= 500:
            mapped = (_T, "service_error")
        elif status == 429:
            mapped = (_T, "throttled")
        else:
            mapped = (_P, "aws_client_error")
    error_type, code = mapped
    if operation == "AssumeRole" and not issubclass(error_type, TransientSourceError):
        # The role could not be assumed: a config or trust-policy problem, not the secret's.
        return PermanentSourceError(reason, code="assume_role_failed")
    if aws_code == "InvalidRequestException" and "delet" in aws_message.lower():
        return AccessLostError(reason, code="secret_deleted")
    if aws_code == "ResourceNotFoundException" and "staging label" in aws_message.lower():
        return AccessLostError(reason, code="version_stage_not_found")
    return error_type(reason, code=code)


def as_source_error(exc: Exception, region: str) -> SourceError:
    """``exc`` if sidkeyd raised it, else its translation."""
    if isinstance(exc, SourceError):
        return exc
    return translate_error(exc, region)
