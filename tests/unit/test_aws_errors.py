"""The AWS source's error tables: complete for the service model, and translated as documented."""

from __future__ import annotations

import re
from typing import Any

import boto3
import botocore.exceptions as bx
import pytest
from botocore.retries.standard import ThrottledRetryableChecker, TransientRetryableChecker

from sidkeyd.errors import (
    AccessLostError,
    PermanentSourceError,
    SourceError,
    TransientSourceError,
)
from sidkeyd.sources.aws import (
    BOTOCORE_ERRORS,
    DELIBERATELY_UNMAPPED,
    ERROR_CODES,
    translate_error,
)

SNAKE_CASE = re.compile(r"[a-z]+(_[a-z0-9]+)*")
READ_OPERATIONS = ("DescribeSecret", "GetSecretValue")


def service_model() -> Any:
    client = boto3.client(
        "secretsmanager",
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    return client.meta.service_model


def service_error_codes() -> set[str]:
    """The error codes of every error shape in botocore's Secrets Manager model."""
    return {shape.error_code for shape in service_model().error_shapes}


def client_error(
    code: str, message: str = "", status: int = 400, operation: str = "GetSecretValue"
) -> bx.ClientError:
    response: Any = {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return bx.ClientError(response, operation)


def translated(exc: Exception) -> tuple[type[SourceError], str]:
    error = translate_error(exc, "us-east-1")
    return type(error), error.code


@pytest.mark.parametrize(("aws_code", "mapping"), sorted(ERROR_CODES.items()))
def test_every_mapped_code_names_a_source_error_and_a_code(
    aws_code: str, mapping: tuple[type[SourceError], str]
) -> None:
    """Each table entry maps to a SourceError subclass and a snake_case code."""
    error_type, code = mapping
    assert (True, True) == (
        issubclass(error_type, SourceError) and error_type is not SourceError,
        SNAKE_CASE.fullmatch(code) is not None,
    )


@pytest.mark.parametrize(
    ("exc_type", "error_type", "code"), BOTOCORE_ERRORS, ids=lambda v: getattr(v, "__name__", v)
)
def test_every_botocore_exception_entry_names_a_source_error_and_a_code(
    exc_type: type[Exception], error_type: type[SourceError], code: str
) -> None:
    """Each botocore exception entry maps to a SourceError subclass and a snake_case code."""
    assert (True, True, True) == (
        issubclass(exc_type, bx.BotoCoreError),
        issubclass(error_type, SourceError) and error_type is not SourceError,
        SNAKE_CASE.fullmatch(code) is not None,
    )


def test_every_service_error_shape_is_mapped_or_deliberately_unmapped() -> None:
    """A new Secrets Manager error in botocore's model fails here until it is classified."""
    shapes = service_error_codes()
    assert set() == shapes - set(ERROR_CODES) - set(DELIBERATELY_UNMAPPED)


def test_no_error_is_both_mapped_and_deliberately_unmapped() -> None:
    """The two tables do not overlap."""
    assert set() == set(ERROR_CODES) & set(DELIBERATELY_UNMAPPED)


def test_deliberately_unmapped_errors_are_real_and_explained() -> None:
    """Every unmapped entry is a current error shape, with a reason."""
    shapes = service_error_codes()
    assert [] == [
        name for name, why in DELIBERATELY_UNMAPPED.items() if name not in shapes or not why
    ]


def test_errors_of_the_operations_sidkeyd_calls_are_all_mapped() -> None:
    """No error that DescribeSecret or GetSecretValue can raise is left unmapped."""
    model = service_model()
    raised = {
        shape.error_code
        for operation in READ_OPERATIONS
        for shape in model.operation_model(operation).error_shapes
    }
    assert set() == raised - set(ERROR_CODES)


def test_botocore_throttling_codes_are_transient() -> None:
    """Every code botocore's retry logic treats as throttling or transient is transient here."""
    codes = [
        *ThrottledRetryableChecker._THROTTLED_ERROR_CODES,
        *TransientRetryableChecker._TRANSIENT_ERROR_CODES,
    ]
    assert [] == [c for c in codes if ERROR_CODES.get(c, (None,))[0] is not TransientSourceError]


def test_botocore_transient_exceptions_are_transient() -> None:
    """Exceptions botocore retries as transient (connection, HTTP client) are transient here."""
    transient = TransientRetryableChecker._TRANSIENT_EXCEPTION_CLS
    entries = [entry for entry in BOTOCORE_ERRORS if issubclass(entry[0], transient)]
    assert [] == [e for e in entries if e[1] is not TransientSourceError]


@pytest.mark.parametrize(
    ("aws_code", "expected"),
    [
        ("ThrottlingException", (TransientSourceError, "throttled")),
        ("InternalServiceError", (TransientSourceError, "service_error")),
        ("AccessDeniedException", (AccessLostError, "access_denied")),
        ("ResourceNotFoundException", (AccessLostError, "secret_not_found")),
        ("DecryptionFailure", (PermanentSourceError, "decryption_failed")),
        ("InvalidParameterException", (PermanentSourceError, "invalid_parameter")),
        ("UnrecognizedClientException", (PermanentSourceError, "credentials_invalid")),
    ],
)
def test_client_errors_translate_through_the_table(
    aws_code: str, expected: tuple[type[SourceError], str]
) -> None:
    """A ClientError becomes the class and code its AWS code maps to."""
    assert expected == translated(client_error(aws_code))


def test_secret_marked_for_deletion_is_access_lost() -> None:
    """InvalidRequestException about a deletion becomes AccessLostError secret_deleted."""
    message = "You can't perform this operation on the secret because it was marked for deletion."
    assert (AccessLostError, "secret_deleted") == translated(
        client_error("InvalidRequestException", message)
    )


def test_other_invalid_requests_are_permanent() -> None:
    """Any other InvalidRequestException is PermanentSourceError invalid_request."""
    assert (PermanentSourceError, "invalid_request") == translated(
        client_error("InvalidRequestException", "You can't do that.")
    )


def test_missing_staging_label_is_its_own_code() -> None:
    """ResourceNotFoundException about a staging label says version_stage_not_found."""
    message = "Secrets Manager can't find the specified secret value for staging label: AWSX"
    assert (AccessLostError, "version_stage_not_found") == translated(
        client_error("ResourceNotFoundException", message)
    )


def test_unknown_server_errors_are_transient() -> None:
    """An unmapped code with a 5xx status is transient."""
    assert (TransientSourceError, "service_error") == translated(
        client_error("SomethingNew", status=503)
    )


def test_unknown_too_many_requests_is_throttled() -> None:
    """An unmapped code with status 429 is throttling."""
    assert (TransientSourceError, "throttled") == translated(client_error("Slower", status=429))


def test_unknown_client_errors_are_permanent() -> None:
    """An unmapped code with a 4xx status is PermanentSourceError aws_client_error."""
    assert (PermanentSourceError, "aws_client_error") == translated(client_error("Weird"))


def test_assume_role_refusal_is_its_own_code() -> None:
    """STS refusing AssumeRole is PermanentSourceError assume_role_failed, not access lost."""
    error = client_error(
        "AccessDenied", "not authorized to perform sts:AssumeRole", 403, "AssumeRole"
    )
    assert (PermanentSourceError, "assume_role_failed") == translated(error)


def test_assume_role_throttling_stays_transient() -> None:
    """STS throttling AssumeRole is transient like any throttling."""
    error = client_error("Throttling", "Rate exceeded", 400, "AssumeRole")
    assert (TransientSourceError, "throttled") == translated(error)


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (
            bx.ConnectTimeoutError(endpoint_url="https://x"),
            (TransientSourceError, "connect_timeout"),
        ),
        (bx.ReadTimeoutError(endpoint_url="https://x"), (TransientSourceError, "read_timeout")),
        (
            bx.EndpointConnectionError(endpoint_url="https://x"),
            (TransientSourceError, "endpoint_unreachable"),
        ),
        (
            bx.ConnectionClosedError(endpoint_url="https://x"),
            (TransientSourceError, "connection_closed"),
        ),
        (bx.NoCredentialsError(), (PermanentSourceError, "no_credentials")),
        (
            bx.PartialCredentialsError(provider="env", cred_var="AWS_SECRET_ACCESS_KEY"),
            (PermanentSourceError, "partial_credentials"),
        ),
        (
            bx.CredentialRetrievalError(provider="sso", error_msg="expired"),
            (PermanentSourceError, "credentials_unavailable"),
        ),
        (bx.ProfileNotFound(profile="prod"), (PermanentSourceError, "profile_not_found")),
        (bx.ParamValidationError(report="bad"), (PermanentSourceError, "invalid_parameter")),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else None,
)
def test_botocore_exceptions_translate_through_the_table(
    exc: Exception, expected: tuple[type[SourceError], str]
) -> None:
    """botocore's own exceptions become the class and code the table gives."""
    assert expected == translated(exc)


def test_reason_names_the_region_and_the_aws_code() -> None:
    """The reason starts with the region and carries AWS's code and message."""
    error = translate_error(
        client_error("AccessDeniedException", "User x is not authorized"), "eu-west-1"
    )
    assert (
        "eu-west-1: GetSecretValue failed with AccessDeniedException: User x is not authorized"
        == (error.reason)
    )


def test_long_aws_messages_are_truncated() -> None:
    """An AWS message is cut to a bounded length in the reason."""
    error = translate_error(client_error("AccessDeniedException", "x" * 5000), "us-east-1")
    assert True is (len(error.reason) < 500)


@pytest.mark.parametrize(
    "error",
    [
        "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: unable to get local issuer "
        "certificate (_ssl.c:1006)",
        "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: Hostname mismatch, "
        "certificate is not valid for 'secretsmanager.eu-west-1.amazonaws.com'. (_ssl.c:1006)",
    ],
)
def test_refused_certificate_is_permanent(error: str) -> None:
    """An untrusted certificate or one for another name will not fix itself: tls_error."""
    exc = bx.SSLError(endpoint_url="https://x", error=error)
    assert (PermanentSourceError, "tls_error") == translated(exc)


def test_other_tls_failure_is_transient() -> None:
    """A handshake cut short usually goes away (botocore still words it "SSL validation
    failed"): transient, so that fallback regions are tried."""
    exc = bx.SSLError(
        endpoint_url="https://x",
        error="[SSL: UNEXPECTED_EOF_WHILE_READING] EOF occurred in violation of protocol",
    )
    assert (TransientSourceError, "tls_connection_error") == translated(exc)
