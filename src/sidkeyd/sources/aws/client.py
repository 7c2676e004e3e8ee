"""The AWS source's boto3 session and clients: built once, on first use, under one lock.

One botocore session per source (boto3's standard chain, optionally a profile, then an assumed
role on top), one Secrets Manager client per region, and one SQS client for the change queue.
"""

from __future__ import annotations

import functools
import re
import threading
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

from sidkeyd.config import AwsSourceConfig
from sidkeyd.errors import PermanentSourceError

if TYPE_CHECKING:
    from mypy_boto3_secretsmanager import SecretsManagerClient
    from mypy_boto3_sqs import SQSClient

_AWS_DOMAINS: Final = (".amazonaws.com", ".amazonaws.com.cn")
_REGION_IN_HOST = re.compile(r"(?:^|[.-])([a-z]{2}(?:-[a-z]+)+-\d+)\.")


class _FixedCredentialProvider(CredentialProvider):
    """Hands a botocore session the assume-role credentials built by ``AwsClients``."""

    METHOD = "sidkeyd-assume-role"
    CANONICAL_NAME = "custom-sidkeyd-assume-role"

    def __init__(self, credentials: Credentials) -> None:
        super().__init__()
        self._credentials = credentials

    def load(self) -> Credentials:
        return self._credentials


class AwsClients:
    """The session and the clients of one AWS source. Raises botocore's exceptions."""

    def __init__(self, config: AwsSourceConfig, *, notify_wait_s: int) -> None:
        self._config = config
        self._notify_wait_s = notify_wait_s
        self.botocore_config = BotocoreConfig(
            connect_timeout=config.connect_timeout.total_seconds(),
            read_timeout=config.read_timeout.total_seconds(),
            retries={"mode": config.retry_mode, "total_max_attempts": config.max_attempts},
            user_agent_extra="sidkeyd",
        )
        self.notify_region = queue_region(config.notify_queue_url) or config.region
        # Guards building and dropping the session and the clients (_session, _clients, _sqs,
        # _closed). The clients themselves are thread-safe: calls made through them run
        # without it.
        self._lock = threading.Lock()
        self._session: boto3.Session | None = None
        self._clients: dict[str, SecretsManagerClient] = {}
        self._sqs: SQSClient | None = None
        self._kms: Any = None  # no KMS stubs in the dev tools: botocore's client, untyped
        self._closed = False

    @property
    def session(self) -> boto3.Session | None:
        """The boto3 session, once the first client was built."""
        return self._session

    @property
    def closed(self) -> bool:
        return self._closed

    def endpoint_url(self, region: str) -> str | None:
        """The configured ``endpoint_url`` for ``region`` (``{region}`` replaced), if any."""
        template = self._config.endpoint_url
        return template.replace("{region}", region) if template is not None else None

    def secretsmanager(self, region: str) -> SecretsManagerClient:
        """The Secrets Manager client for ``region``, built once."""
        with self._lock:
            client = self._clients.get(region)
            if client is None:
                client = self._usable_session().client(
                    "secretsmanager",
                    region_name=region,
                    endpoint_url=self.endpoint_url(region),
                    config=self.botocore_config,
                )
                self._clients[region] = client
            return client

    def kms(self) -> Any:
        """The KMS client of the primary region (the kms signer), built once."""
        with self._lock:
            if self._kms is None:
                self._kms = self._usable_session().client(
                    "kms",
                    region_name=self._config.region,
                    endpoint_url=self.endpoint_url(self._config.region),
                    config=self.botocore_config,
                )
            return self._kms

    def sqs(self) -> SQSClient:
        """The SQS client for ``notify_queue_url``, built once from the same session.

        Its region is the queue's (read from an AWS queue URL), else the primary region. Its
        endpoint is never ``endpoint_url`` (Secrets Manager's): botocore's for that region when
        the queue is on an AWS host, else the queue URL's own ``scheme://host:port`` (moto,
        LocalStack). Its read timeout covers the long poll.
        """
        with self._lock:
            if self._sqs is None:
                config = self._config
                self._sqs = self._usable_session().client(
                    "sqs",
                    region_name=self.notify_region,
                    endpoint_url=sqs_endpoint(config.notify_queue_url),
                    config=self.botocore_config.merge(
                        BotocoreConfig(
                            read_timeout=config.read_timeout.total_seconds() + self._notify_wait_s
                        )
                    ),
                )
            return self._sqs

    def close(self) -> None:
        """Close every client; any later request for one raises ``source_closed``."""
        with self._lock:
            self._closed = True
            clients: list[Any] = list(self._clients.values())
            if self._sqs is not None:
                clients.append(self._sqs)
            if self._kms is not None:
                clients.append(self._kms)
            self._clients, self._sqs, self._kms = {}, None, None
            self._session = None
        for client in clients:
            client.close()

    def _usable_session(self) -> boto3.Session:
        """The session, built on first use; the caller holds the lock."""
        if self._closed:
            raise PermanentSourceError(
                f"source {self._config.name!r} is closed", code="source_closed"
            )
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
                base.create_client, region_name=config.region, config=self.botocore_config
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


def queue_region(queue_url: str | None) -> str | None:
    """The region in an AWS queue URL (``https://sqs.eu-west-1.amazonaws.com/…``), if any."""
    if queue_url is None:
        return None
    host = queue_url.split("://", 1)[-1].split("/", 1)[0]
    found = _REGION_IN_HOST.search(host)
    return found.group(1) if found else None


def sqs_endpoint(queue_url: str | None) -> str | None:
    """The SQS endpoint for a queue URL: ``None`` (botocore's) for an AWS host, else its origin."""
    if queue_url is None:
        return None
    parts = urlsplit(queue_url)
    if not parts.scheme or not parts.hostname or parts.hostname.lower().endswith(_AWS_DOMAINS):
        return None
    return f"{parts.scheme}://{parts.netloc}"
