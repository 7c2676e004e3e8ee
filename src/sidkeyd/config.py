"""The config schema: frozen, typed data, validated once by ``config_loader``.

Durations are ``timedelta`` here and strings with units (``"30s"``, ``"5m"``) in the file.
Relative paths in the file are already resolved against the config file's folder.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Literal

from sidkeyd.defaults import DEFAULT_SOCKET_PATH
from sidkeyd.policy import AccessPolicy

PayloadFormat = Literal["auto", "json", "plain"]
SignerKind = Literal["local", "transit", "kms"]


@dataclass(frozen=True)
class ServerConfig:
    socket: Path = DEFAULT_SOCKET_PATH
    socket_mode: int = 0o660
    socket_group: str | int | None = None  # a group name, or a numeric gid
    timestamp_skew: timedelta = timedelta(minutes=5)
    max_connections: int = 256
    # One uid cannot take every slot. Left out of the file, min(64, max_connections).
    max_connections_per_uid: int = 64
    backlog: int = 1024  # listen() queue of connections not yet accepted
    max_header_bytes: int = 8 * 1024
    max_body_bytes: int = 64 * 1024
    read_timeout: timedelta = timedelta(seconds=10)
    idle_timeout: timedelta = timedelta(seconds=60)
    # Unsent responses that do not drain for this long: the client is not reading; abort.
    write_timeout: timedelta = timedelta(seconds=10)
    shutdown_timeout: timedelta = timedelta(seconds=10)
    sign_rate_limit: float = 0.0  # signatures per second per peer uid; 0 is no limit
    sign_rate_burst: int = 0  # 0 means one second's worth
    lock_memory: bool = False  # mlockall: keys never reach swap


@dataclass(frozen=True)
class RefreshConfig:
    """How and when keys are re-read; the ``[refresh]`` table, overridable per environment."""

    interval: timedelta = timedelta(seconds=60)
    jitter: float = 0.1
    backoff_min: timedelta = timedelta(seconds=1)
    backoff_max: timedelta = timedelta(minutes=5)
    max_stale: timedelta = timedelta(hours=24)
    revoke_grace: timedelta = timedelta(minutes=5)
    report_interval: timedelta = timedelta(seconds=5)
    verify_previous_for: timedelta = timedelta(0)


@dataclass(frozen=True)
class MetricsConfig:
    """Prometheus metrics: ``GET /metrics`` on the socket, and optionally a TCP listener."""

    enabled: bool = True
    listen: tuple[str, int] | None = None  # (host, port); loopback unless allow_remote
    allow_remote: bool = False
    readers: AccessPolicy | None = None  # who may scrape on the socket, besides the admins


@dataclass(frozen=True)
class LogConfig:
    format: Literal["json", "console"] = "json"
    level: Literal["debug", "info", "warning", "error"] = "info"


AuditFailure = Literal["refuse", "continue"]
FsyncMode = Literal["never", "interval", "always"]


@dataclass(frozen=True)
class AuditConfig:
    """The audit trail (docs/audit.md): a file (``path``), stdout, or both, apart from the log."""

    path: Path | None = None
    stdout: bool = False
    on_audit_failure: AuditFailure = "refuse"  # "continue" serves without a record, loudly
    fsync: FsyncMode = "interval"
    fsync_interval: timedelta = timedelta(seconds=1)
    # How long an answer waits for its record before it is refused (a sink nobody reads).
    write_timeout: timedelta = timedelta(milliseconds=500)
    # An audit.checkpoint record, its seq and chain also in the operational log (the journal).
    checkpoint_interval: timedelta = timedelta(minutes=5)

    @property
    def enabled(self) -> bool:
        return self.path is not None or self.stdout


@dataclass(frozen=True)
class FileSourceConfig:
    """A local TOML or JSON file of secrets: for development and simple hosts."""

    name: str
    path: Path
    type: Literal["file"] = "file"


@dataclass(frozen=True)
class AwsSourceConfig:
    """AWS Secrets Manager through boto3; credentials come from boto3's standard chain."""

    name: str
    region: str
    endpoint_url: str | None = None
    profile: str | None = None
    role_arn: str | None = None
    role_session_name: str = "sidkeyd"
    external_id: str | None = None
    connect_timeout: timedelta = timedelta(seconds=5)
    read_timeout: timedelta = timedelta(seconds=10)
    retry_mode: Literal["standard", "adaptive", "legacy"] = "standard"
    max_attempts: int = 3
    fallback_regions: tuple[str, ...] = ()
    notify_queue_url: str | None = None
    type: Literal["aws"] = "aws"


VaultAuthMethod = Literal["token", "approle", "kubernetes", "jwt"]


@dataclass(frozen=True)
class VaultAuthConfig:
    """How the Vault source logs in. Secrets come from files or VAULT_TOKEN, never this file."""

    method: VaultAuthMethod = "token"
    mount: str | None = None  # the auth mount path; defaults to the method's name
    token_file: Path | None = None
    role_id_file: Path | None = None
    secret_id_file: Path | None = None
    remove_secret_id_file_after_reading: bool = False
    role: str | None = None
    jwt_file: Path | None = None

    @property
    def mount_path(self) -> str:
        return self.mount or self.method


@dataclass(frozen=True)
class VaultSourceConfig:
    """HashiCorp Vault or OpenBao KV (v1 or v2) through hvac."""

    name: str
    url: str
    auth: VaultAuthConfig = field(default_factory=VaultAuthConfig)
    namespace: str | None = None
    mount: str = "secret"
    kv_version: Literal[1, 2] = 2
    verify: bool = True
    ca_cert: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    tls_server_name: str | None = None
    timeout: timedelta = timedelta(seconds=10)
    type: Literal["vault"] = "vault"


SourceConfig = FileSourceConfig | AwsSourceConfig | VaultSourceConfig


@dataclass(frozen=True)
class EnvironmentConfig:
    """One Smile ID environment (sandbox, production...) and where its key lives."""

    name: str
    source: str
    secret: str
    partner_id: str | None = None
    payload: PayloadFormat = "auto"
    api_key_field: str = "api_key"
    partner_id_field: str = "partner_id"
    version_stage: str | None = None  # aws only; None means AWSCURRENT
    version: int | None = None  # vault kv v2 only: pin a version
    refresh: RefreshConfig = field(default_factory=RefreshConfig)
    allow: AccessPolicy | None = None  # None: any peer that can open the socket
    smileid: SmileIdV3Config | None = None  # None: no V3 token for this environment
    signer: SignerKind = "local"  # "local": the key is read and held; else the backend signs
    transit_mount: str = "transit"  # signer = "transit" only
    transit_key: str | None = None  # signer = "transit": the Transit key of type hmac
    kms_key: str | None = None  # signer = "kms": an HMAC_256 key's alias (or id, ARN)
    presign: PresignConfig = field(default_factory=lambda: PresignConfig())

    @property
    def remote(self) -> bool:
        """The backend computes the HMAC: no key is read, ``secret`` is unused."""
        return self.signer != "local"


@dataclass(frozen=True)
class PresignConfig:
    """Signatures of the coming whole seconds, prepared by a remote signer ahead of need."""

    lead: timedelta = timedelta(minutes=10)  # the table reaches this far ahead after a refill
    refill_below: timedelta = timedelta(minutes=5)  # refill when less than this is left
    # Timestamps per Transit call (batch_input); KMS has no batch call. 300: a refill from
    # 5 to 10 minutes ahead is one call.
    batch: int = 300
    # Live calls (caller timestamps, verifies not presigned) outstanding at once, queued and
    # running: past it a live call is refused, so one environment cannot fill the pool's queue.
    live_calls_max: int = 16


SMILEID_BASE_URLS = {
    "sandbox": "https://testapi.smileidentity.com",
    "production": "https://api.smileidentity.com",
}


@dataclass(frozen=True)
class SmileIdV3Config:
    """Where sidkeyd gets an environment's V3 token (``POST /v3/token``) with the key it holds."""

    url: str  # https base URL: SMILEID_BASE_URLS[smileid] unless smileid_url overrides it
    ca_file: Path | None = None  # an extra CA bundle (a proxy, a test server)
    timeout: timedelta = timedelta(seconds=10)


def default_admin() -> AccessPolicy:
    """root and the daemon's own uid."""
    return AccessPolicy(uids=frozenset({0, os.getuid()}))


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    refresh: RefreshConfig = field(default_factory=RefreshConfig)
    log: LogConfig = field(default_factory=LogConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    admin: AccessPolicy = field(default_factory=default_admin)
    sources: Mapping[str, SourceConfig] = field(default_factory=lambda: MappingProxyType({}))
    environments: Mapping[str, EnvironmentConfig] = field(
        default_factory=lambda: MappingProxyType({})
    )
    path: Path | None = None

    def warnings(self) -> list[str]:
        """Legal but risky choices, said by check-config and at startup."""
        warnings = []
        for name, env in self.environments.items():
            if env.allow is None:
                warnings.append(
                    f"environments.{name}: no [allow] table, so any process that can open the "
                    "socket may get its signatures"
                )
            elif env.allow.executables_only:
                warnings.append(f"environments.{name}.allow: {_EXECUTABLES_ONLY}")
        if self.admin.executables_only:
            warnings.append(f"admin: {_EXECUTABLES_ONLY}")
        return warnings


_EXECUTABLES_ONLY = (
    "only executables are listed, and any process that can open the socket can pass that "
    "check (exec an allowed binary after connecting, LD_PRELOAD, a user namespace); add uids, "
    "users, gids or groups (docs/security.md)"
)
