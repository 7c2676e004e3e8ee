"""The AWS Secrets Manager source: one boto3 session per source, one client per region.

A check with a key held calls ``DescribeSecret`` and compares the version carrying the wanted
stage with the version held; ``GetSecretValue`` runs only on a change, a first load or a forced
check. The key version is the Secrets Manager ``VersionId`` (equal in every replica region).

When the primary region fails with a transient error, ``fallback_regions`` are tried in order;
``served_by`` says which region answered. ``endpoint_url`` applies to every region and may
contain ``{region}``, replaced by the region being called.

With ``notify_queue_url`` set, ``watch()`` starts the SQS watcher (``notify.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Final

import boto3
import botocore.exceptions as bx

from sidkeyd.config import AwsSourceConfig, EnvironmentConfig
from sidkeyd.errors import (
    AccessLostError,
    InvalidSecretError,
    SourceError,
    TransientSourceError,
)
from sidkeyd.log import get_logger
from sidkeyd.sources import FetchResult, SecretValue, Unchanged
from sidkeyd.sources.aws.client import AwsClients
from sidkeyd.sources.aws.errors import translate_error
from sidkeyd.sources.aws.events import secret_matches
from sidkeyd.sources.aws.kms import KmsKeys
from sidkeyd.sources.aws.notify import NOTIFY_WAIT_S, SqsWatcher
from sidkeyd.sources.payload import key_from_text

if TYPE_CHECKING:
    from mypy_boto3_secretsmanager import SecretsManagerClient
    from mypy_boto3_secretsmanager.type_defs import GetSecretValueResponseTypeDef
    from mypy_boto3_sqs import SQSClient

DEFAULT_VERSION_STAGE: Final = "AWSCURRENT"


class AwsSource:
    """``type = "aws"``: keys in AWS Secrets Manager, read with boto3."""

    def __init__(self, config: AwsSourceConfig, *, notify_wait_s: int = NOTIFY_WAIT_S) -> None:
        self.name = config.name
        self._config = config
        self._regions = (config.region, *(r for r in config.fallback_regions if r != config.region))
        wait_s = max(0, min(NOTIFY_WAIT_S, notify_wait_s))
        self._clients = AwsClients(config, notify_wait_s=wait_s)
        self._kms = KmsKeys(self._clients.kms, config.region)
        self._log = get_logger()
        queue_url = config.notify_queue_url
        self._watcher = (
            SqsWatcher(self.name, queue_url, self._clients, wait_s=wait_s)
            if queue_url is not None
            else None
        )

    def __repr__(self) -> str:
        return f"AwsSource(name={self.name!r}, regions={self._regions!r})"

    @property
    def regions(self) -> tuple[str, ...]:
        """The primary region, then the fallback regions, in the order they are tried."""
        return self._regions

    def endpoint_url(self, region: str) -> str | None:
        """The configured ``endpoint_url`` for ``region`` (``{region}`` replaced), if any."""
        return self._clients.endpoint_url(region)

    def client(self, region: str | None = None) -> SecretsManagerClient:
        """The Secrets Manager client for ``region`` (the primary by default), built once.

        Raises botocore's exceptions (``fetch`` translates them).
        """
        return self._clients.secretsmanager(region or self._config.region)

    def sqs_client(self) -> SQSClient:
        """The SQS client for ``notify_queue_url``, built once (see ``AwsClients.sqs``)."""
        return self._clients.sqs()

    @property
    def session(self) -> boto3.Session | None:
        """The boto3 session, once the first client was built."""
        return self._clients.session

    # -- the Source protocol ---------------------------------------------------------------

    def fetch(self, environment: EnvironmentConfig, held_version: str | None) -> FetchResult:
        if environment.signer == "kms":  # the key stays in KMS: check which key the alias names
            return self._kms.check(environment, held_version)
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
        if self._watcher is not None:
            self._watcher.stop()
        self._kms.close()
        self._clients.close()

    # -- the WatchingSource protocol ---------------------------------------------------------

    def watch(self, on_change: Callable[[str], None]) -> None:
        """Long-poll ``notify_queue_url`` in a daemon thread; nothing without one.

        See ``SqsWatcher.start``; the schedule goes on regardless of the queue.
        """
        if self._watcher is not None and not self._clients.closed:
            self._watcher.start(on_change)

    def matches(self, secret: str, changed: str) -> bool:
        """Whether an event about ``changed`` concerns the configured ``secret``.

        See ``events.secret_matches``: names, partial and full ARNs; doubt errs towards yes.
        """
        return secret_matches(secret, changed)


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
