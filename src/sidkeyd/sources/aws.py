"""The AWS Secrets Manager source: one boto3 session per source, one client per region.

A check with a key held calls ``DescribeSecret`` and compares the version carrying the wanted
stage with the version held; ``GetSecretValue`` runs only on a change, a first load or a forced
check. The key version is the Secrets Manager ``VersionId`` (equal in every replica region).

When the primary region fails with a transient error, ``fallback_regions`` are tried in order;
``served_by`` says which region answered. ``endpoint_url`` applies to every region and may
contain ``{region}``, replaced by the region being called.

Every botocore error is translated here, at the boundary, into a ``SourceError`` through the
tables below; messages carry AWS's error code and message, never a payload.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

import boto3
import botocore.exceptions as bx
import botocore.session
from botocore.config import Config as BotocoreConfig
from botocore.credentials import (
    AssumeRoleCredentialFetcher,
    CredentialProvider,
    CredentialResolver,
    Credentials,
    DeferredRefreshableCredentials,
)

from sidkeyd.config import AwsSourceConfig, EnvironmentConfig
from sidkeyd.errors import (
    AccessLostError,
    InvalidSecretError,
    PermanentSourceError,
    SourceError,
    TransientSourceError,
)
from sidkeyd.log import get_logger
from sidkeyd.sources import FetchResult, SecretValue, Unchanged
from sidkeyd.sources.payload import key_from_text

if TYPE_CHECKING:
    from mypy_boto3_secretsmanager import SecretsManagerClient
    from mypy_boto3_secretsmanager.type_defs import GetSecretValueResponseTypeDef

DEFAULT_VERSION_STAGE: Final = "AWSCURRENT"
MAX_AWS_MESSAGE_CHARS: Final = 300

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
    (bx.SSLError, _P, "tls_error"),
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


def translate_error(exc: Exception, region: str) -> SourceError:
    """The ``SourceError`` for a botocore exception raised while calling ``region``."""
    if isinstance(exc, bx.ClientError):
        return _translate_client_error(exc, region)
    for exc_type, error_type, code in BOTOCORE_ERRORS:
        if isinstance(exc, exc_type):
            return error_type(f"{region}: {_truncate(str(exc))}", code=code)
    return TransientSourceError(f"{region}: unexpected {type(exc).__name__}", code="aws_error")


def _translate_client_error(exc: bx.ClientError, region: str) -> SourceError:
    error = exc.response.get("Error", {})
    aws_code = str(error.get("Code", "Unknown"))
    aws_message = _truncate(str(error.get("Message", "")))
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


def _truncate(text: str) -> str:
    text = " ".join(text.split())
    if len(text) <= MAX_AWS_MESSAGE_CHARS:
        return text
    return text[:MAX_AWS_MESSAGE_CHARS] + "...(truncated)"


class _FixedCredentialProvider(CredentialProvider):
    """Hands a botocore session the assume-role credentials built by ``AwsSource``."""

    METHOD = "sidkeyd-assume-role"
    CANONICAL_NAME = "custom-sidkeyd-assume-role"

    def __init__(self, credentials: Credentials) -> None:
        super().__init__()
        self._credentials = credentials

    def load(self) -> Credentials:
        return self._credentials


class AwsSource:
    """``type = "aws"``: keys in AWS Secrets Manager, read with boto3."""

    def __init__(self, config: AwsSourceConfig) -> None:
        self.name = config.name
        self._config = config
        self._regions = (config.region, *(r for r in config.fallback_regions if r != config.region))
        self._botocore_config = BotocoreConfig(
            connect_timeout=config.connect_timeout.total_seconds(),
            read_timeout=config.read_timeout.total_seconds(),
            retries={"mode": config.retry_mode, "total_max_attempts": config.max_attempts},
            user_agent_extra="sidkeyd",
        )
        self._lock = threading.Lock()
        self._session: boto3.Session | None = None
        self._clients: dict[str, SecretsManagerClient] = {}
        self._closed = False
        self._log = get_logger()

    @property
    def regions(self) -> tuple[str, ...]:
        """The primary region, then the fallback regions, in the order they are tried."""
        return self._regions

    def endpoint_url(self, region: str) -> str | None:
        """The configured ``endpoint_url`` for ``region`` (``{region}`` replaced), if any."""
        template = self._config.endpoint_url
        return template.replace("{region}", region) if template is not None else None

    # -- clients -------------------------------------------------------------------------

    def client(self, region: str | None = None) -> SecretsManagerClient:
        """The Secrets Manager client for ``region`` (the primary by default), built once.

        Clients are thread-safe; building them is not, hence the lock. Raises botocore's
        exceptions (``fetch`` translates them).
        """
        region = region or self._config.region
        with self._lock:
            if self._closed:
                raise PermanentSourceError(f"source {self.name!r} is closed", code="source_closed")
            client = self._clients.get(region)
            if client is None:
                session = self._session or self._build_session()
                self._session = session
                # A client built while the chain finds nothing would stay without credentials
                # for good; failing now lets the next check look again (IMDS back, say).
                if session.get_credentials() is None:
                    raise bx.NoCredentialsError()
                client = session.client(
                    "secretsmanager",
                    region_name=region,
                    endpoint_url=self.endpoint_url(region),
                    config=self._botocore_config,
                )
                self._clients[region] = client
            return client

    def _build_session(self) -> boto3.Session:
        """boto3's standard chain (optionally a profile), then the role on top if configured."""
        config = self._config
        base = botocore.session.Session(profile=config.profile)
        if config.role_arn is None:
            return boto3.Session(botocore_session=base, region_name=config.region)
        source_credentials = base.get_credentials()
        if source_credentials is None:
            raise bx.NoCredentialsError()
        extra_args: dict[str, Any] = {"RoleSessionName": config.role_session_name}
        if config.external_id is not None:
            extra_args["ExternalId"] = config.external_id
        fetcher = AssumeRoleCredentialFetcher(
            client_creator=functools.partial(
                base.create_client, region_name=config.region, config=self._botocore_config
            ),
            source_credentials=source_credentials,
            role_arn=config.role_arn,
            extra_args=extra_args,
        )
        # Fetched on first use and refreshed by botocore before they expire.
        credentials = DeferredRefreshableCredentials(
            refresh_using=fetcher.fetch_credentials, method="assume-role"
        )
        target = botocore.session.Session(profile=config.profile)
        target.register_component(
            "credential_provider", CredentialResolver([_FixedCredentialProvider(credentials)])
        )
        return boto3.Session(botocore_session=target, region_name=config.region)

    @property
    def session(self) -> boto3.Session | None:
        """The boto3 session, once the first client was built."""
        return self._session

    # -- the Source protocol ---------------------------------------------------------------

    def fetch(self, environment: EnvironmentConfig, held_version: str | None) -> FetchResult:
        primary, *fallbacks = self._regions
        try:
            return self._fetch_from(primary, environment, held_version)
        except TransientSourceError as exc:
            if not fallbacks:
                raise
            primary_error = exc
        failures: list[str] = [primary_error.reason]
        for region in fallbacks:
            try:
                result = self._fetch_from(region, environment, held_version)
            except SourceError as exc:
                failures.append(f"fallback {exc.reason}")
                continue
            self._log.warning(
                "source.region_failover",
                source=self.name,
                environment=environment.name,
                failed_region=primary,
                served_by=region,
                error_code=primary_error.code,
                reason=primary_error.reason,
            )
            return result
        # The primary's failure was transient, so the whole check is: a fallback's permanent
        # error (the secret not replicated there, say) must not read as "access lost".
        raise TransientSourceError("; ".join(failures), code=primary_error.code) from primary_error

    def _fetch_from(
        self, region: str, environment: EnvironmentConfig, held_version: str | None
    ) -> FetchResult:
        stage = environment.version_stage or DEFAULT_VERSION_STAGE
        try:
            client = self.client(region)
            if held_version is not None:
                current = self._version_at_stage(client, region, environment.secret, stage)
                if current == held_version:
                    return Unchanged(current, served_by=region)
            response = client.get_secret_value(SecretId=environment.secret, VersionStage=stage)
        except SourceError:
            raise
        except (bx.BotoCoreError, bx.ClientError) as exc:
            raise translate_error(exc, region) from exc
        api_key, partner_id = key_from_text(_payload_text(response), environment)
        return SecretValue(
            api_key=api_key,
            partner_id=partner_id,
            version=response["VersionId"],
            served_by=region,
        )

    def _version_at_stage(
        self, client: SecretsManagerClient, region: str, secret: str, stage: str
    ) -> str:
        described = client.describe_secret(SecretId=secret)
        if described.get("DeletedDate") is not None:
            raise AccessLostError(
                f"{region}: secret {secret!r} is marked for deletion", code="secret_deleted"
            )
        for version_id, stages in described.get("VersionIdsToStages", {}).items():
            if stage in stages:
                return version_id
        raise AccessLostError(
            f"{region}: secret {secret!r} has no version labelled {stage!r}",
            code="version_stage_not_found",
        )

    def close(self) -> None:
        with self._lock:
            self._closed = True
            clients, self._clients = list(self._clients.values()), {}
            self._session = None
        for client in clients:
            client.close()

    def __repr__(self) -> str:
        return f"AwsSource(name={self.name!r}, regions={self._regions!r})"


def _payload_text(response: GetSecretValueResponseTypeDef) -> str:
    """The secret's text: ``SecretString``, or ``SecretBinary`` read as UTF-8."""
    text = response.get("SecretString")
    if text is not None:
        return text
    binary = response.get("SecretBinary")
    if binary is None:
        raise InvalidSecretError(
            "secret version has neither SecretString nor SecretBinary", code="malformed_payload"
        )
    try:
        return bytes(binary).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidSecretError(
            "SecretBinary is not UTF-8 text: store the key as text or as a UTF-8 JSON object",
            code="binary_not_utf8",
        ) from None
