"""The AWS Secrets Manager source: one boto3 session per source, one client per region.

A check with a key held calls ``DescribeSecret`` and compares the version carrying the wanted
stage with the version held; ``GetSecretValue`` runs only on a change, a first load or a forced
check. The key version is the Secrets Manager ``VersionId`` (equal in every replica region).

When the primary region fails with a transient error, ``fallback_regions`` are tried in order;
``served_by`` says which region answered. ``endpoint_url`` applies to every region and may
contain ``{region}``, replaced by the region being called.

Every botocore error is translated here, at the boundary, into a ``SourceError`` through the
tables below; messages carry AWS's error code and message, never a payload.

With ``notify_queue_url`` set, ``watch()`` starts a daemon thread that long-polls an SQS queue
fed by EventBridge with Secrets Manager's change events, and tells the engine which secret
changed; the schedule stays the safety net, so a broken queue is only logged.
"""

from __future__ import annotations

import functools
import json
import random
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

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
from sidkeyd.log import get_logger, untrusted
from sidkeyd.redaction import backend_text
from sidkeyd.sources import FetchResult, SecretValue, Unchanged
from sidkeyd.sources.payload import key_from_text

if TYPE_CHECKING:
    from mypy_boto3_secretsmanager import SecretsManagerClient
    from mypy_boto3_secretsmanager.type_defs import GetSecretValueResponseTypeDef
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.type_defs import DeleteMessageBatchRequestEntryTypeDef, MessageTypeDef

DEFAULT_VERSION_STAGE: Final = "AWSCURRENT"
MAX_AWS_MESSAGE_CHARS: Final = 300

# The change notifications (``notify_queue_url``).
NOTIFY_WAIT_S: Final = 20  # SQS long poll: ReceiveMessage's WaitTimeSeconds (at most 20)
NOTIFY_BATCH: Final = 10  # ReceiveMessage's MaxNumberOfMessages (at most 10)
NOTIFY_BACKOFF_MIN_S: Final = 1.0
NOTIFY_BACKOFF_MAX_S: Final = 60.0
NOTIFY_JOIN_S: Final = 1.0  # close() waits this long for the poller; it is a daemon thread
# Secrets Manager API calls (CloudTrail ``eventName``) after which a secret's value or staging
# labels may differ. Reads are deliberately absent: a GetSecretValue event must never force a
# GetSecretValue (with CloudTrail data events on, that would loop).
CHANGE_EVENTS: Final = frozenset(
    {
        "PutSecretValue",
        "UpdateSecret",
        "UpdateSecretVersionStage",
        "RotationSucceeded",
        "DeleteSecret",
        "RestoreSecret",
    }
)
_AWS_DOMAINS: Final = (".amazonaws.com", ".amazonaws.com.cn")
_REGION_IN_HOST = re.compile(r"(?:^|[.-])([a-z]{2}(?:-[a-z]+)+-\d+)\.")
_ARN = re.compile(r"^(arn:[^:]+:secretsmanager:[^:]*:[^:]*):secret:(.+)$")
_ARN_SUFFIX = re.compile(r"-[A-Za-z0-9]{6}$")

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


# A TLS failure about the certificate (untrusted, expired, another name) stays until someone
# fixes it; any other (a reset or EOF during the handshake) usually goes away on its own.
# botocore words every SSLError "SSL validation failed", hence the OpenSSL and Python texts.
_CERTIFICATE_REFUSED = re.compile(
    r"certificate[ _]verify[ _]failed|hostname mismatch|ip address mismatch|doesn't match",
    re.IGNORECASE,
)


_AWS_CODE = re.compile(r"[A-Za-z][A-Za-z0-9_.]{0,63}")


def translate_error(exc: Exception, region: str) -> SourceError:
    """The ``SourceError`` for a botocore exception raised while calling ``region``."""
    if isinstance(exc, bx.ClientError):
        return _translate_client_error(exc, region)
    if isinstance(exc, bx.SSLError) and _CERTIFICATE_REFUSED.search(str(exc)):
        return PermanentSourceError(f"{region}: {_truncate(str(exc))}", code="tls_error")
    for exc_type, error_type, code in BOTOCORE_ERRORS:
        if isinstance(exc, exc_type):
            return error_type(f"{region}: {_truncate(str(exc))}", code=code)
    return TransientSourceError(f"{region}: unexpected {type(exc).__name__}", code="aws_error")


def _translate_client_error(exc: bx.ClientError, region: str) -> SourceError:
    error = exc.response.get("Error", {})
    aws_code = str(error.get("Code", "Unknown"))
    if not _AWS_CODE.fullmatch(aws_code):  # the endpoint's words: shown only if code-shaped
        aws_code = "Unknown"
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
    """AWS's own words: a hostile or buggy endpoint may put secret text in them."""
    return backend_text(text, limit=MAX_AWS_MESSAGE_CHARS)


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

    def __init__(self, config: AwsSourceConfig, *, notify_wait_s: int = NOTIFY_WAIT_S) -> None:
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
        self._notify_wait_s = max(0, min(NOTIFY_WAIT_S, notify_wait_s))
        self._notify_region = _queue_region(config.notify_queue_url) or config.region
        self._sqs: SQSClient | None = None
        self._watcher: threading.Thread | None = None
        self._stop = threading.Event()

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
            client = self._clients.get(region)
            if client is None:
                client = self._usable_session().client(
                    "secretsmanager",
                    region_name=region,
                    endpoint_url=self.endpoint_url(region),
                    config=self._botocore_config,
                )
                self._clients[region] = client
            return client

    def sqs_client(self) -> SQSClient:
        """The SQS client for ``notify_queue_url``, built once from the same session.

        Its region is the queue's (read from an AWS queue URL), else the primary region. Its
        endpoint is never ``endpoint_url`` (Secrets Manager's): botocore's for that region when
        the queue is on an AWS host, else the queue URL's own ``scheme://host:port`` (moto,
        LocalStack). Its read timeout covers the long poll.
        """
        with self._lock:
            if self._sqs is None:
                config = self._config
                region = self._notify_region
                self._sqs = self._usable_session().client(
                    "sqs",
                    region_name=region,
                    endpoint_url=_sqs_endpoint(config.notify_queue_url),
                    config=self._botocore_config.merge(
                        BotocoreConfig(
                            read_timeout=config.read_timeout.total_seconds() + self._notify_wait_s
                        )
                    ),
                )
            return self._sqs

    def _usable_session(self) -> boto3.Session:
        """The session, built on first use; the caller holds the lock."""
        if self._closed:
            raise PermanentSourceError(f"source {self.name!r} is closed", code="source_closed")
        session = self._session or self._build_session()
        self._session = session
        # A client built while the chain finds nothing would stay without credentials for
        # good; failing now lets the next call look again (IMDS back, say).
        if session.get_credentials() is None:
            raise bx.NoCredentialsError()
        return session

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
        self._stop.set()
        watcher = self._watcher
        if watcher is not None and watcher is not threading.current_thread():
            # A long poll in flight is not interrupted: wait a little, then leave the daemon
            # thread to finish its poll and exit without acting on what it received.
            watcher.join(timeout=NOTIFY_JOIN_S)
        with self._lock:
            self._closed = True
            clients: list[Any] = list(self._clients.values())
            if self._sqs is not None:
                clients.append(self._sqs)
            self._clients, self._sqs = {}, None
            self._session = None
        for client in clients:
            client.close()

    # -- the WatchingSource protocol ---------------------------------------------------------

    def watch(self, on_change: Callable[[str], None]) -> None:
        """Long-poll ``notify_queue_url`` in a daemon thread; nothing without one.

        ``on_change(secret_id)`` is called for every change event naming a secret (once per
        secret per batch received). Every message received is deleted once handled, those that
        cannot be read too (logged). A failing queue is logged (``aws.notify_failed``) and
        polled again after a backoff; the schedule goes on regardless.
        """
        queue_url = self._config.notify_queue_url
        if queue_url is None:
            return
        with self._lock:
            if self._watcher is not None or self._closed:
                return
            self._watcher = threading.Thread(
                target=self._watch_loop,
                args=(queue_url, on_change),
                name=f"sidkeyd-aws-notify-{self.name}",
                daemon=True,
            )
            self._watcher.start()

    def matches(self, secret: str, changed: str) -> bool:
        """Whether an event about ``changed`` concerns the configured ``secret``.

        Either may be a name, a partial ARN or a full ARN (whose name ends in ``-`` and six
        random characters). Two ARNs must also agree on partition, region and account. A
        doubtful match errs towards yes: it costs one forced check, a miss costs a rotation
        noticed only on schedule.
        """
        if secret == changed:
            return True
        secret_prefix, secret_names = _secret_names(secret)
        changed_prefix, changed_names = _secret_names(changed)
        if None not in (secret_prefix, changed_prefix) and secret_prefix != changed_prefix:
            return False
        return not secret_names.isdisjoint(changed_names)

    def _watch_loop(self, queue_url: str, on_change: Callable[[str], None]) -> None:
        log = self._log.bind(source=self.name, queue_url=queue_url)
        log.info("aws.notify_started", wait_s=self._notify_wait_s)
        rng = random.Random()
        failures = 0
        while not self._stop.is_set():
            try:
                received = self.sqs_client().receive_message(
                    QueueUrl=queue_url,
                    MaxNumberOfMessages=NOTIFY_BATCH,
                    WaitTimeSeconds=self._notify_wait_s,
                )
            except Exception as exc:  # whatever happens, the poller lives on
                if self._stop.is_set():
                    break
                failures += 1
                error = _as_source_error(exc, self._notify_region)
                ceiling = min(NOTIFY_BACKOFF_MAX_S, NOTIFY_BACKOFF_MIN_S * 2 ** (failures - 1))
                delay = rng.uniform(NOTIFY_BACKOFF_MIN_S, max(ceiling, NOTIFY_BACKOFF_MIN_S))
                log.warning(
                    "aws.notify_failed",
                    operation="ReceiveMessage",
                    error_kind=error.kind,
                    error_code=error.code,
                    reason=error.reason,
                    consecutive_failures=failures,
                    retry_in_s=round(delay, 3),
                )
                self._stop.wait(delay)
                continue
            if failures:
                log.info("aws.notify_recovered", after_failures=failures)
                failures = 0
            if self._stop.is_set():
                break  # left in the queue: visible again after the visibility timeout
            self._handle_batch(log, queue_url, received.get("Messages", []), on_change)
        log.info("aws.notify_stopped")

    def _handle_batch(
        self,
        log: Any,
        queue_url: str,
        messages: Iterable[MessageTypeDef],
        on_change: Callable[[str], None],
    ) -> None:
        changed: dict[str, None] = {}  # ordered, deduplicated
        receipts: list[str] = []
        for message in messages:
            message_id = message.get("MessageId")
            receipt = message.get("ReceiptHandle")
            if receipt is not None:
                receipts.append(receipt)
            try:
                event_name, secret = parse_change_event(message.get("Body", ""))
            except ValueError as exc:
                log.warning("aws.notify_unparseable", message_id=message_id, reason=str(exc))
                continue
            if secret is None:
                log.debug(
                    "aws.notify_ignored", message_id=message_id, event_name=untrusted(event_name)
                )
                continue
            log.info(
                "aws.notify_received",
                message_id=message_id,
                event_name=event_name,
                secret=untrusted(secret, 512),
            )
            changed[secret] = None
        for secret in changed:
            try:
                on_change(secret)
            except Exception as exc:  # e.g. the event loop is already closed
                log.warning(
                    "aws.notify_failed",
                    operation="on_change",
                    error_code="callback_failed",
                    reason=type(exc).__name__,
                )
        if receipts:
            self._delete(log, queue_url, receipts)

    def _delete(self, log: Any, queue_url: str, receipts: list[str]) -> None:
        entries: list[DeleteMessageBatchRequestEntryTypeDef] = [
            {"Id": str(i), "ReceiptHandle": r} for i, r in enumerate(receipts)
        ]
        try:
            answer = self.sqs_client().delete_message_batch(QueueUrl=queue_url, Entries=entries)
        except Exception as exc:
            error = _as_source_error(exc, self._notify_region)
            log.warning(
                "aws.notify_failed",
                operation="DeleteMessageBatch",
                error_kind=error.kind,
                error_code=error.code,
                reason=error.reason,
            )
            return
        failures = answer.get("Failed", [])
        for failed in failures:
            log.warning(
                "aws.notify_failed",
                operation="DeleteMessageBatch",
                error_code=failed.get("Code"),
                reason=_truncate(str(failed.get("Message", ""))),
            )
        log.info(
            "aws.notify_deleted", count=len(answer.get("Successful", [])), failed=len(failures)
        )

    def __repr__(self) -> str:
        return f"AwsSource(name={self.name!r}, regions={self._regions!r})"


def parse_change_event(body: str) -> tuple[str, str | None]:
    """``(event name, secret id)`` of a Secrets Manager event as EventBridge delivers it to SQS.

    The body is the EventBridge event, or an SNS notification whose ``Message`` is (SNS to SQS
    without raw delivery). The secret is CloudTrail's ``requestParameters.secretId``, or
    ``additionalEventData.SecretId`` for ``RotationSucceeded``. It is ``None`` for an event
    that changes no key: another service, a call not in ``CHANGE_EVENTS``, or a call that
    failed (CloudTrail's ``errorCode``). Raises ``ValueError`` for anything else; the
    message never quotes the body.
    """
    event = _json_object(body, "body")
    if event.get("Type") == "Notification" and isinstance(event.get("Message"), str):
        event = _json_object(event["Message"], "SNS Message")
    detail = event.get("detail")
    if not isinstance(detail, dict):
        raise ValueError("not an EventBridge event: no detail object")
    event_name = detail.get("eventName")
    if not isinstance(event_name, str):
        raise ValueError("not a CloudTrail event: no detail.eventName")
    source = event.get("source")
    if source not in (None, "aws.secretsmanager") or event_name not in CHANGE_EVENTS:
        return event_name, None
    if detail.get("errorCode") is not None:
        return event_name, None
    for container, field in (
        ("requestParameters", "secretId"),
        ("additionalEventData", "SecretId"),
    ):
        holder = detail.get(container)
        if isinstance(holder, dict) and isinstance(holder.get(field), str) and holder[field]:
            return event_name, str(holder[field])
    raise ValueError(f"{event_name} event names no secret")


def _json_object(text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        raise ValueError(f"{what} is not JSON") from None
    if not isinstance(value, dict):
        raise ValueError(f"{what} is not a JSON object")
    return value


def _secret_names(secret: str) -> tuple[str | None, frozenset[str]]:
    """``(ARN prefix or None, the names it may stand for)`` of a secret name or ARN.

    An ARN's last part may end in Secrets Manager's ``-`` and six random characters (full ARN)
    or not (partial ARN); both readings are kept.
    """
    arn = _ARN.match(secret)
    if arn is None:
        return None, frozenset({secret})
    prefix, name = arn.groups()
    return prefix, frozenset({name, _ARN_SUFFIX.sub("", name)})


def _queue_region(queue_url: str | None) -> str | None:
    """The region in an AWS queue URL (``https://sqs.eu-west-1.amazonaws.com/…``), if any."""
    if queue_url is None:
        return None
    host = queue_url.split("://", 1)[-1].split("/", 1)[0]
    found = _REGION_IN_HOST.search(host)
    return found.group(1) if found else None


def _sqs_endpoint(queue_url: str | None) -> str | None:
    """The SQS endpoint for a queue URL: ``None`` (botocore's) for an AWS host, else its origin."""
    if queue_url is None:
        return None
    parts = urlsplit(queue_url)
    if not parts.scheme or not parts.hostname or parts.hostname.lower().endswith(_AWS_DOMAINS):
        return None
    return f"{parts.scheme}://{parts.netloc}"


def _as_source_error(exc: Exception, region: str) -> SourceError:
    if isinstance(exc, SourceError):
        return exc
    return translate_error(exc, region)


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
