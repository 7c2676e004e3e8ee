"""Read and validate a TOML config file into the frozen schema of ``config``.

Every problem is collected (TOML key path and reason) so that one run of ``check-config``
names them all. Unknown keys are problems too: a typo must not silently fall back to a default.
"""

from __future__ import annotations

import grp
import importlib.util
import ipaddress
import os
import pwd
import re
import stat
import tomllib
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any, cast
from urllib.parse import urlsplit

from sidkeyd.config import (
    SMILEID_BASE_URLS,
    AuditConfig,
    AwsSourceConfig,
    Config,
    EnvironmentConfig,
    FileSourceConfig,
    LogConfig,
    MetricsConfig,
    PresignConfig,
    RefreshConfig,
    ServerConfig,
    SmileIdV3Config,
    SourceConfig,
    VaultAuthConfig,
    VaultSourceConfig,
    default_admin,
)
from sidkeyd.config_table import TomlTable
from sidkeyd.errors import ConfigError, ConfigProblem
from sidkeyd.policy import AccessPolicy

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_PARTNER_ID = re.compile(r"[0-9]{1,32}")  # as checks.resolve_partner_id asks of a secret's


# A config is a few KiB; the bound keeps a reload from reading a runaway file into memory.
MAX_CONFIG_BYTES = 1024 * 1024


def load_config(path: Path) -> Config:
    """Load ``path``; raise ConfigError naming every problem."""
    try:
        raw = _read_config_file(path)
    except OSError as exc:
        raise ConfigError([ConfigProblem("(file)", f"cannot read {path}: {exc.strerror}")]) from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError([ConfigProblem("(file)", _toml_problem(raw, exc))]) from exc
    except RecursionError:  # tomllib recurses per nested array or inline table
        raise ConfigError([ConfigProblem("(file)", f"{path} nests values too deeply")]) from None
    return parse_config(data, base_dir=path.resolve().parent, path=path)


def _read_config_file(path: Path) -> bytes:
    """A regular file of at most MAX_CONFIG_BYTES; never blocks on a FIFO or a device."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfigError([ConfigProblem("(file)", f"{path} is not a regular file")])
        raw = file.read(MAX_CONFIG_BYTES + 1)
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(
            [ConfigProblem("(file)", f"{path} is larger than {MAX_CONFIG_BYTES} bytes")]
        )
    return raw


# partner_id = 085: TOML refuses a number with a leading zero, and its message does not say why.
_LEADING_ZERO = re.compile(rb"^\s*(partner_id)\s*=\s*0\d+\s*(#.*)?$", re.MULTILINE)


def _toml_problem(raw: bytes, exc: Exception) -> str:
    unquoted = _LEADING_ZERO.search(raw)
    if unquoted is not None:
        line = raw[: unquoted.start()].count(b"\n") + 1
        return (
            f'line {line}: partner_id must be a quoted string, as partner_id = "085": '
            "unquoted, a leading zero is not valid TOML (and would be lost)"
        )
    return f"not valid TOML: {exc}"


def parse_config(data: Mapping[str, Any], *, base_dir: Path, path: Path | None = None) -> Config:
    """Validate already-parsed TOML data."""
    problems: list[ConfigProblem] = []
    root = TomlTable(data, "", problems, base_dir)
    server = _server(root.table("server"))
    refresh = _refresh(root.table("refresh"), RefreshConfig())
    log_table = root.table("log")
    log = LogConfig(
        format=log_table.choice("format", ("json", "console"), "json"),
        level=log_table.choice("level", ("debug", "info", "warning", "error"), "info"),
    )
    log_table.finish()
    admin = _policy(root.table("admin"), default_admin()) if "admin" in data else default_admin()
    metrics = _metrics(root.table("metrics"))
    audit = _audit(root.table("audit"))
    sources = {name: _source(name, table) for name, table in root.tables("sources")}
    environments = {
        name: _environment(name, table, refresh, sources)
        for name, table in root.tables("environments")
    }
    if not environments:
        problems.append(ConfigProblem("environments", "at least one environment is required"))
    root.finish()
    if problems:
        raise ConfigError(problems)
    return Config(
        server=server,
        refresh=refresh,
        log=log,
        admin=admin,
        metrics=metrics,
        audit=audit,
        sources=MappingProxyType({k: v for k, v in sources.items() if v is not None}),
        environments=MappingProxyType(environments),
        path=path,
    )


def _server(table: TomlTable) -> ServerConfig:
    d = ServerConfig()
    max_connections = table.integer("max_connections", d.max_connections, 1, 1_000_000)
    per_uid_default = min(d.max_connections_per_uid, max_connections)
    per_uid = table.integer("max_connections_per_uid", per_uid_default, 1, 1_000_000)
    if per_uid > max_connections:
        table.problem(
            "max_connections_per_uid", f"must not be over max_connections ({max_connections})"
        )
        per_uid = per_uid_default
    config = ServerConfig(
        socket=table.path("socket", d.socket) or d.socket,
        socket_mode=table.mode("socket_mode", d.socket_mode),
        socket_group=table.name_or_id("socket_group"),
        timestamp_skew=table.duration("timestamp_skew", d.timestamp_skew),
        max_connections=max_connections,
        max_connections_per_uid=per_uid,
        backlog=table.integer("backlog", d.backlog, 1, 65535),
        max_header_bytes=table.integer("max_header_bytes", d.max_header_bytes, 256, 1 << 20),
        max_body_bytes=table.integer("max_body_bytes", d.max_body_bytes, 64, 16 << 20),
        read_timeout=table.duration("read_timeout", d.read_timeout),
        idle_timeout=table.duration("idle_timeout", d.idle_timeout),
        write_timeout=table.duration(
            "write_timeout", d.write_timeout, minimum=timedelta(milliseconds=100)
        ),
        shutdown_timeout=table.duration("shutdown_timeout", d.shutdown_timeout),
        sign_rate_limit=table.number("sign_rate_limit", d.sign_rate_limit, 0.0, 1e9),
        sign_rate_burst=table.integer("sign_rate_burst", d.sign_rate_burst, 0, 1_000_000_000),
        lock_memory=table.boolean("lock_memory", d.lock_memory),
    )
    table.finish()
    return config


def _metrics(table: TomlTable) -> MetricsConfig:
    enabled = table.boolean("enabled", True)
    allow_remote = table.boolean("allow_remote", False)
    listen_text = table.optional_str("listen")
    listen = None
    if listen_text is not None:
        host, _, port = listen_text.rpartition(":")
        host = host.strip("[]")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            table.problem("listen", 'must be "host:port", such as "127.0.0.1:9464"')
        else:
            listen = (host, int(port))
            if not allow_remote and not _loopback(host):
                table.problem(
                    "listen", f"{host!r} is not a loopback address: set allow_remote = true"
                )
    readers = _policy(table.table("readers"), None) if "readers" in table.raw else None
    table.finish()
    return MetricsConfig(enabled, listen, allow_remote, readers)


def _audit(table: TomlTable) -> AuditConfig:
    d = AuditConfig()
    config = AuditConfig(
        path=table.path("path", None),
        stdout=table.boolean("stdout", d.stdout),
        on_audit_failure=table.choice(
            "on_audit_failure", ("refuse", "continue"), d.on_audit_failure
        ),
        fsync=table.choice("fsync", ("never", "interval", "always"), d.fsync),
        fsync_interval=table.duration(
            "fsync_interval", d.fsync_interval, minimum=timedelta(milliseconds=10)
        ),
        write_timeout=table.duration(
            "write_timeout", d.write_timeout, minimum=timedelta(milliseconds=10)
        ),
        checkpoint_interval=table.duration(
            "checkpoint_interval", d.checkpoint_interval, minimum=timedelta(seconds=1)
        ),
    )
    table.finish()
    return config


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _refresh(table: TomlTable, base: RefreshConfig, *, finish: bool = True) -> RefreshConfig:
    config = RefreshConfig(
        interval=table.duration("interval", base.interval, minimum=timedelta(seconds=1)),
        jitter=table.number("jitter", base.jitter, 0.0, 1.0),
        backoff_min=table.duration("backoff_min", base.backoff_min),
        backoff_max=table.duration("backoff_max", base.backoff_max),
        max_stale=table.duration("max_stale", base.max_stale),
        revoke_grace=table.duration("revoke_grace", base.revoke_grace),
        report_interval=table.duration("report_interval", base.report_interval),
        verify_previous_for=table.duration("verify_previous_for", base.verify_previous_for),
    )
    if config.backoff_min > config.backoff_max:
        table.problem("backoff_min", "must not be longer than backoff_max")
    if finish:
        table.finish()
    return config


def _source(name: str, table: TomlTable) -> SourceConfig | None:
    if not _NAME.fullmatch(name):
        table.problem("", "source names use letters, digits, '_', '.' and '-' (64 at most)")
    kind = table.choice("type", ("file", "aws", "vault"), None)
    source: SourceConfig | None
    if kind == "file":
        path = table.path("path", None)
        if path is None:
            table.problem("path", "required for a file source")
        source = FileSourceConfig(name=name, path=path or Path())
    elif kind == "aws":
        source = _aws_source(name, table)
    elif kind == "vault":
        source = _vault_source(name, table)
    else:
        source = None
    if kind in _LIBRARIES and importlib.util.find_spec(_LIBRARIES[kind]) is None:
        table.problem(
            "type",
            f"{kind!r} needs the {_LIBRARIES[kind]} library, which is not installed: "
            f"pip install 'sidkeyd[{kind}]'",
        )
    table.finish()
    return source


# The backend library each source type needs: an extra of its own, so that a service that
# only imports sidkeyd.client does not install them.
_LIBRARIES = {"aws": "boto3", "vault": "hvac"}


def _aws_source(name: str, table: TomlTable) -> AwsSourceConfig:
    d = AwsSourceConfig(name=name, region="")
    region = table.required_str("region")
    return AwsSourceConfig(
        name=name,
        region=region,
        endpoint_url=table.optional_str("endpoint_url"),
        profile=table.optional_str("profile"),
        role_arn=table.optional_str("role_arn"),
        role_session_name=table.string("role_session_name", d.role_session_name),
        external_id=table.optional_str("external_id"),
        connect_timeout=table.duration("connect_timeout", d.connect_timeout),
        read_timeout=table.duration("read_timeout", d.read_timeout),
        retry_mode=table.choice("retry_mode", ("standard", "adaptive", "legacy"), d.retry_mode),
        max_attempts=table.integer("max_attempts", d.max_attempts, 1, 20),
        fallback_regions=table.str_list("fallback_regions"),
        notify_queue_url=table.optional_str("notify_queue_url"),
    )


def _vault_source(name: str, table: TomlTable) -> VaultSourceConfig:
    d = VaultSourceConfig(name=name, url="")
    url = table.required_str("url")
    if url and not url.startswith(("http://", "https://")):
        table.problem("url", "must start with http:// or https://")
    auth_table = table.table("auth")
    auth = VaultAuthConfig(
        method=auth_table.choice("method", ("token", "approle", "kubernetes", "jwt"), "token"),
        mount=auth_table.optional_str("mount"),
        token_file=auth_table.path("token_file", None),
        role_id_file=auth_table.path("role_id_file", None),
        secret_id_file=auth_table.path("secret_id_file", None),
        remove_secret_id_file_after_reading=auth_table.boolean(
            "remove_secret_id_file_after_reading", False
        ),
        role=auth_table.optional_str("role"),
        jwt_file=auth_table.path("jwt_file", None),
    )
    needs = {
        "approle": ("role_id_file", "secret_id_file"),
        "kubernetes": ("role",),
        "jwt": ("role", "jwt_file"),
    }.get(auth.method, ())
    for key in needs:
        if getattr(auth, key) is None:
            auth_table.problem(key, f"required for auth method {auth.method!r}")
    auth_table.finish()
    kv_version = table.integer("kv_version", d.kv_version, 1, 2)
    return VaultSourceConfig(
        name=name,
        url=url,
        auth=auth,
        namespace=table.optional_str("namespace"),
        mount=table.string("mount", d.mount).strip("/"),
        kv_version=cast("Any", kv_version),
        verify=table.boolean("verify", d.verify),
        ca_cert=table.path("ca_cert", None),
        client_cert=table.path("client_cert", None),
        client_key=table.path("client_key", None),
        tls_server_name=table.optional_str("tls_server_name"),
        timeout=table.duration("timeout", d.timeout),
    )


def _policy(table: TomlTable, empty: AccessPolicy | None) -> AccessPolicy:
    """uids/users, gids/groups and executables; names are resolved now, not at request time."""
    # A numeric id is taken as it is: a client container's users need not exist here.
    uids = set(table.int_list("uids"))
    for user in table.names_or_ids("users"):
        try:
            uids.add(user if isinstance(user, int) else pwd.getpwnam(user).pw_uid)
        except KeyError:
            table.problem("users", f"no such user {user!r}")
    gids = set(table.int_list("gids"))
    for group in table.names_or_ids("groups"):
        try:
            gids.add(group if isinstance(group, int) else grp.getgrnam(group).gr_gid)
        except KeyError:
            table.problem("groups", f"no such group {group!r}")
    executables = set()
    for path in table.str_list("executables"):
        if not os.path.isabs(path):
            table.problem("executables", f"{path!r} must be an absolute path")
        elif not os.path.exists(path):
            table.problem("executables", f"{path!r} does not exist")
        else:
            executables.add(os.path.realpath(path))  # /proc/<pid>/exe names the real file
    table.finish()
    if not table.raw:
        table.problem("", "lists nobody: give uids, users, gids, groups or executables")
        return empty or AccessPolicy()
    return AccessPolicy(frozenset(uids), frozenset(gids), frozenset(executables))


def _smileid_v3(table: TomlTable) -> SmileIdV3Config | None:
    """``smileid`` (sandbox/production) or ``smileid_url``; both absent: no V3 token."""
    kind = table.choice("smileid", tuple(SMILEID_BASE_URLS), "") or None
    url = table.optional_str("smileid_url")
    ca_file = table.path("smileid_ca_file", None)
    timeout = table.duration("smileid_timeout", SmileIdV3Config(url="").timeout)
    if url is None and kind is None:
        for key in ("smileid_ca_file", "smileid_timeout"):
            if key in table.raw:
                table.problem(key, "needs smileid or smileid_url")
        return None
    if url is not None:
        parsed = urlsplit(url)
        if parsed.scheme != "https" or not parsed.netloc or parsed.query or parsed.fragment:
            table.problem("smileid_url", "must be an https URL without query or fragment")
    if ca_file is not None and not ca_file.is_file():
        table.problem("smileid_ca_file", f"{ca_file} is not a file")
    base = url if url is not None else SMILEID_BASE_URLS[kind or "sandbox"]
    return SmileIdV3Config(url=base.rstrip("/"), ca_file=ca_file, timeout=timeout)


def _environment(
    name: str,
    table: TomlTable,
    refresh: RefreshConfig,
    sources: Mapping[str, SourceConfig | None],
) -> EnvironmentConfig:
    if not _NAME.fullmatch(name):
        table.problem("", "environment names use letters, digits, '_', '.' and '-' (64 at most)")
    source_name = table.required_str("source")
    source = sources.get(source_name)
    if source_name and source_name not in sources:
        table.problem("source", f"no source named {source_name!r} in [sources]")
    partner_id = table.optional_str("partner_id", allow_int=True)
    if partner_id is not None and not _PARTNER_ID.fullmatch(partner_id):
        # Served in every answer and in status with or without a key: a key pasted here
        # would be shown to every client. Not quoted in the message for the same reason.
        table.problem("partner_id", 'must be a Smile ID partner id: digits, such as "085"')
        partner_id = None
    signer = table.choice("signer", ("local", "transit", "kms"), "local")
    environment = EnvironmentConfig(
        name=name,
        source=source_name,
        # A remote signer reads no secret; one given anyway is named by _check_signer.
        secret=table.required_str("secret") if signer == "local" else "",
        partner_id=partner_id,
        payload=table.choice("payload", ("auto", "json", "plain"), "auto"),
        api_key_field=table.string("api_key_field", "api_key"),
        partner_id_field=table.string("partner_id_field", "partner_id"),
        version_stage=table.optional_str("version_stage"),
        version=table.optional_int("version", 1),
        refresh=_refresh(table, refresh, finish=False),
        allow=_policy(table.table("allow"), None) if "allow" in table.raw else None,
        smileid=_smileid_v3(table),
        signer=signer,
        transit_mount=table.string("transit_mount", "transit").strip("/"),
        transit_key=table.optional_str("transit_key"),
        kms_key=table.optional_str("kms_key"),
        presign=_presign(table),
    )
    _check_signer(table, environment, source)
    if environment.version_stage is not None and source is not None and source.type != "aws":
        table.problem("version_stage", "only an aws source has version stages")
    if "payload" in table.raw and source is not None and source.type != "aws":
        table.problem(
            "payload", f"a {source.type} secret is always a table of fields; payload is for aws"
        )
    if (
        isinstance(source, VaultSourceConfig)
        and source.kv_version == 2
        and environment.secret.startswith(("data/", "metadata/"))
    ):
        table.problem(
            "secret",
            "the path under the mount, without data/ or metadata/ (sidkeyd adds them for KV v2)",
        )
    if (
        environment.version is not None
        and source is not None
        and (not isinstance(source, VaultSourceConfig) or source.kv_version != 2)
    ):
        table.problem("version", "only a vault source with kv_version = 2 pins versions")
    if environment.payload == "plain" and partner_id is None:
        table.problem("partner_id", "required when payload = 'plain' (the secret is the key alone)")
    table.finish()
    return environment


# What only a key read from a secret uses: meaningless when the backend signs.
_LOCAL_ONLY = (
    "secret", "payload", "api_key_field", "partner_id_field", "version", "version_stage",
    "smileid", "smileid_url",
)  # fmt: skip
_PRESIGN_KEYS = ("presign_lead", "presign_refill_below", "presign_batch", "live_calls_max")
# Transit refuses a batch_input past about 500 entries ("high complexity").
MAX_PRESIGN_BATCH = 450
MAX_LIVE_CALLS = 1024


def _presign(table: TomlTable) -> PresignConfig:
    d = PresignConfig()
    config = PresignConfig(
        lead=table.duration("presign_lead", d.lead, minimum=timedelta(seconds=10)),
        refill_below=table.duration(
            "presign_refill_below", d.refill_below, minimum=timedelta(seconds=5)
        ),
        batch=table.integer("presign_batch", d.batch, 1, MAX_PRESIGN_BATCH),
        live_calls_max=table.integer("live_calls_max", d.live_calls_max, 1, MAX_LIVE_CALLS),
    )
    if config.refill_below >= config.lead:
        table.problem("presign_refill_below", "must be shorter than presign_lead")
    return config


# Each remote signer: the source type it runs on, its own keys, and the one it requires.
_SIGNERS = {
    "transit": ("a vault", ("transit_mount", "transit_key"), "transit_key"),
    "kms": ("an aws", ("kms_key",), "kms_key"),
}


def _check_signer(
    table: TomlTable, environment: EnvironmentConfig, source: SourceConfig | None
) -> None:
    """Each signer's keys on its own kind of source, and nothing of the other signers."""
    signer = environment.signer
    for other, (_, keys, _) in _SIGNERS.items():
        for key in keys:
            if other != signer and key in table.raw:
                table.problem(key, f"needs signer = {other!r}")
    if signer == "local":
        for key in _PRESIGN_KEYS:
            if key in table.raw:
                table.problem(key, "needs a remote signer (signer = 'transit' or 'kms')")
        return
    table.optional_str("secret")  # seen: named once below, not also as an unknown key
    for key in _LOCAL_ONLY:
        if key in table.raw:
            table.problem(key, f"a {signer} signer reads no secret: the key stays in {signer}")
    if environment.partner_id is None:
        table.problem("partner_id", f"required with signer = {signer!r} (no secret carries it)")
    source_type, _, required = _SIGNERS[signer]
    if source is not None and source_type.split()[1] != source.type:
        table.problem(
            "signer", f"a {signer} signer needs {source_type} source, not {source.type!r}"
        )
    if not getattr(environment, required):
        table.problem(required, f"required with signer = {signer!r}")


def missing_files(config: Config) -> list[ConfigProblem]:
    """Files the config names that do not exist here: for ``check-config`` on the target host.

    ``serve`` does not refuse them (a mount may come later); a check would fail at once.
    """
    wanted: list[tuple[str, Path | None]] = []
    for name, source in config.sources.items():
        key = f"sources.{name}"
        if isinstance(source, FileSourceConfig):
            wanted.append((f"{key}.path", source.path))
        elif isinstance(source, VaultSourceConfig):
            auth = source.auth
            wanted += [
                (f"{key}.ca_cert", source.ca_cert),
                (f"{key}.client_cert", source.client_cert),
                (f"{key}.client_key", source.client_key),
                (f"{key}.auth.token_file", auth.token_file),
                (f"{key}.auth.role_id_file", auth.role_id_file),
                (f"{key}.auth.jwt_file", auth.jwt_file),
            ]
            if not auth.remove_secret_id_file_after_reading:  # gone after the first start
                wanted.append((f"{key}.auth.secret_id_file", auth.secret_id_file))
    return [
        ConfigProblem(key, f"{path} does not exist (or is not a file)")
        for key, path in wanted
        if path is not None and not path.is_file()
    ]
