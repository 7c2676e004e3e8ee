"""The Vault source: HashiCorp Vault or OpenBao KV (v1 or v2) through hvac.

One hvac client per source, reused across environments and guarded by a lock (the engine may
call ``fetch`` for several environments at once from its thread pool).

Token lifecycle (hvac renews nothing by itself):

* The first ``fetch`` logs in (or, for ``token``, reads the token and looks it up) and starts a
  background renewer thread owned by the source; ``close()`` stops it. A fetch or renewal in
  progress when ``close()`` is called stops before its next step (``source_closed``), so that
  shutdown does not wait for all of its calls.
* The renewer renews the token at two thirds of its TTL. When a renewal is refused, or when the
  granted TTL comes back shorter than the TTL obtained at login (the max TTL is capping it), it
  logs in again. A failed renewal or login (Vault down, sealed) is retried with exponential
  backoff (1s doubling to 60s; while the token is valid, never later than halfway to its
  expiry).
* Each ``fetch`` also checks the token first: an expired token (say the renewer could not reach
  Vault for a while, or the host was suspended) is replaced inline before the read. The timer
  keeps the token alive between checks; the check covers whatever the timer could not do.
  Token lifetimes are measured on ``CLOCK_BOOTTIME`` where there is one (Linux), which keeps
  counting while the host is suspended; elsewhere on ``time.monotonic()``.
* A read answered 403 is followed by a token lookup: if the token itself is refused (revoked),
  the source logs in again and retries the read once; if it is valid, the 403 is a policy
  denial and is reported as such. For ``token`` the re-authentication re-reads ``token_file``
  (Vault Agent rewrites it) or ``VAULT_TOKEN``.

Versions: KV v2 reports the KV version number (``"3"``); with a held version it reads the
metadata first and returns ``Unchanged`` when ``current_version`` has not moved. KV v1 has no
versions, so the version is a content hash, as in the file source.

A soft-deleted or destroyed version raises ``AccessLostError(code="secret_deleted")``: deleting
the secret is an operator's way to cut hosts off, so the engine keeps the last good key for
``revoke_grace`` (time to undelete a mistake) and then stops signing with it.

Errors are translated at this boundary through ``ERROR_MAP``; messages carry Vault's own error
text with any credential this source holds replaced, and never a token, secret id or key.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TypeVar, cast
from urllib.parse import urlsplit

import hvac
import hvac.adapters
import hvac.exceptions as hvac_errors
import requests
import requests.adapters
import requests.exceptions

from sidkeyd.config import EnvironmentConfig, VaultSourceConfig
from sidkeyd.errors import (
    AccessLostError,
    InvalidSecretError,
    PermanentSourceError,
    SourceError,
    TransientSourceError,
)
from sidkeyd.keystore import content_version
from sidkeyd.log import get_logger
from sidkeyd.redaction import backend_text
from sidkeyd.sources import FetchResult, SecretValue, Unchanged
from sidkeyd.sources.payload import key_from_mapping

DEFAULT_KUBERNETES_JWT = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
RENEW_AT_FRACTION: Final = 2 / 3
BACKOFF_MIN_S: Final = 1.0
BACKOFF_MAX_S: Final = 60.0
EXPIRY_MARGIN_S: Final = 1.0  # a token this close to expiry is treated as expired before a read
MAX_MESSAGE_CHARS: Final = 200

T = TypeVar("T")

# Token lifetimes run on a clock that keeps counting while the host is suspended: Linux's
# CLOCK_BOOTTIME. time.monotonic() stops during a suspend there, so a token that expired while
# the host slept would look valid after the resume. Elsewhere, monotonic.
_BOOTTIME: Final = getattr(time, "CLOCK_BOOTTIME", None)


def _clock() -> float:
    """Seconds on the token-lifetime clock (CLOCK_BOOTTIME where available)."""
    if _BOOTTIME is not None:
        return time.clock_gettime(_BOOTTIME)
    return time.monotonic()


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
# A TLS failure about the certificate (untrusted, expired, another name) stays until someone
# fixes it; any other (a reset or EOF during the handshake) usually goes away on its own.
_CERTIFICATE_REFUSED: Final = re.compile(
    r"certificate[ _]verify[ _]failed|hostname mismatch|ip address mismatch|doesn't match",
    re.IGNORECASE,
)


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
    elif isinstance(exc, requests.exceptions.SSLError) and _CERTIFICATE_REFUSED.search(str(exc)):
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
    return backend_text(text, secrets, MAX_MESSAGE_CHARS)


class _Secret:
    """A credential held in memory for re-login; never printed."""

    __slots__ = ("value",)

    def __init__(self, value: str) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "_Secret(<redacted>)"

    __str__ = __repr__


@dataclass
class _Lease:
    """What Vault said about the current token."""

    ttl: float  # seconds granted at the last login or renewal; 0 means it never expires
    renewable: bool
    obtained_at: float  # _clock() when granted
    login_ttl: float  # TTL granted at login: a renewal granting less means max TTL is near

    @property
    def expires(self) -> bool:
        return self.ttl > 0

    def remaining(self, now: float) -> float:
        return self.obtained_at + self.ttl - now

    def renew_at(self) -> float:
        return self.obtained_at + self.ttl * RENEW_AT_FRACTION


class _ServerNameAdapter(requests.adapters.HTTPAdapter):
    """Sends ``server_name`` as SNI and checks the certificate against it, whatever the URL."""

    def __init__(self, server_name: str) -> None:
        self._server_name = server_name  # set first: HTTPAdapter.__init__ builds the pool
        super().__init__()

    def init_poolmanager(
        self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any
    ) -> None:
        pool_kwargs["server_hostname"] = self._server_name
        pool_kwargs["assert_hostname"] = self._server_name
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)


class _Adapter(hvac.adapters.JSONAdapter):
    """hvac's adapter with exactly the configured client certificate, or none.

    ``hvac.Client`` replaces ``cert=None`` by ``VAULT_CLIENT_CERT`` and ``VAULT_CLIENT_KEY``
    (read from the environment when hvac is imported); this adapter ignores what it passes.
    """

    def __init__(self, *, configured_cert: tuple[str, str] | None, **kwargs: Any) -> None:
        super().__init__(**{**kwargs, "cert": configured_cert})


class VaultSource:
    """A ``Source`` reading KV secrets from Vault or OpenBao."""

    def __init__(self, config: VaultSourceConfig) -> None:
        self.name = config.name
        self._config = config
        self._auth = config.auth
        self._host = urlsplit(config.url).netloc or config.url
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        # Set by close() before it waits for the lock: a fetch or renewal holding the lock
        # stops at its next step instead of making every remaining call first.
        self._closing = threading.Event()
        self._lease: _Lease | None = None
        self._token: _Secret | None = None
        self._role_id: _Secret | None = None
        self._secret_id: _Secret | None = None
        self._renewer: threading.Thread | None = None
        self._renew_failures = 0
        self._client = self._make_client(config)

    def __repr__(self) -> str:
        return f"VaultSource(name={self.name!r}, url={self._config.url!r})"

    # -- the Source protocol -------------------------------------------------------------

    def fetch(self, environment: EnvironmentConfig, held_version: str | None) -> FetchResult:
        with self._lock:
            self._refuse_if_closing()
            self._ensure_token()
            try:
                return self._read(environment, held_version)
            except AccessLostError as exc:
                if not isinstance(exc.__cause__, hvac_errors.Forbidden) or self._token_valid():
                    raise  # a policy denial: logging in again would not help
            # 403 and the token itself is refused: revoked, expired or replaced. Log in again
            # and read once more.
            self._refuse_if_closing()
            self._authenticate("permission_denied")
            return self._read(environment, held_version)

    def close(self) -> None:
        self._closing.set()
        with self._lock:
            self._wake.notify_all()
            renewer, self._renewer = self._renewer, None
        if renewer is not None and renewer is not threading.current_thread():
            renewer.join(timeout=5)
        with self._lock:
            self._client.adapter.close()
            self._client.token = ""
            self._token = self._secret_id = self._role_id = None

    def _refuse_if_closing(self) -> None:
        if self._closing.is_set():
            raise TransientSourceError(f"source {self.name!r} is closed", code="source_closed")

    # -- reading -------------------------------------------------------------------------

    def _read(self, environment: EnvironmentConfig, held_version: str | None) -> FetchResult:
        path = environment.secret.strip("/")
        if self._config.kv_version == 1:
            return self._read_kv1(environment, path, held_version)
        return self._read_kv2(environment, path, held_version)

    def _read_kv1(
        self, environment: EnvironmentConfig, path: str, held_version: str | None
    ) -> FetchResult:
        mount = self._config.mount
        with self._step(f"reading {mount}/{path}"):
            response = self._client.secrets.kv.v1.read_secret(path=path, mount_point=mount)
        data = _mapping(_mapping(response, "response").get("data"), "secret data")
        api_key, partner_id = key_from_mapping(data, environment)
        version = content_version("sidkeyd-vault-kv1-version", api_key.reveal(), partner_id)
        if version == held_version:
            return Unchanged(version)
        return SecretValue(api_key=api_key, partner_id=partner_id, version=version)

    def _read_kv2(
        self, environment: EnvironmentConfig, path: str, held_version: str | None
    ) -> FetchResult:
        mount = self._config.mount
        kv2 = self._client.secrets.kv.v2
        if environment.version is None and held_version is not None:
            with self._step(f"reading {mount}/metadata/{path}"):
                response = kv2.read_secret_metadata(path=path, mount_point=mount)
            metadata = _mapping(_mapping(response, "response").get("data"), "metadata")
            current = str(metadata.get("current_version"))
            versions = metadata.get("versions")
            latest = versions.get(current) if isinstance(versions, dict) else None
            if (
                current == held_version
                and isinstance(latest, dict)
                and not _deleted_by(latest, datetime.now(UTC))
                and not latest.get("destroyed")
            ):
                return Unchanged(current)
            # Moved, or deleted (or a deletion_time we cannot read): the data read below is
            # authoritative.
        where = f"{mount}/data/{path}" + (
            f" version {environment.version}" if environment.version is not None else ""
        )
        try:
            with self._step(f"reading {where}"):
                response = kv2.read_secret_version(
                    path=path,
                    version=environment.version,
                    mount_point=mount,
                    # A soft-deleted version comes back as its metadata (not InvalidPath), so
                    # that it can be told apart from a path that never existed.
                    raise_on_deleted_version=False,
                )
        except AccessLostError as exc:
            # hvac returns the metadata of a soft-deleted version, not of a destroyed one.
            response = _metadata_of_missing_version(exc.__cause__)
            if response is None:
                raise
        body = _mapping(_mapping(response, "response").get("data"), "secret")
        meta = _mapping(body.get("metadata"), "secret metadata")
        version = str(meta.get("version"))
        if body.get("data") is None and (meta.get("deletion_time") or meta.get("destroyed")):
            state = "destroyed" if meta.get("destroyed") else "deleted"
            raise AccessLostError(
                f"version {version} of {mount}/{path} is {state}", code="secret_deleted"
            )
        data = _mapping(body.get("data"), "secret data")
        api_key, partner_id = key_from_mapping(data, environment)
        if version == held_version:
            return Unchanged(version)
        return SecretValue(api_key=api_key, partner_id=partner_id, version=version)

    # -- authentication ------------------------------------------------------------------

    def _ensure_token(self) -> None:
        """Log in on first use, and again if the token expired while the renewer could not act."""
        lease = self._lease
        if lease is None:
            self._authenticate("initial")
        elif lease.expires and lease.remaining(_clock()) < EXPIRY_MARGIN_S:
            self._authenticate("token_expired")
        self._start_renewer()

    def _authenticate(self, reason: str) -> None:
        """Obtain a fresh token with the configured method; sets ``_lease``."""
        method = self._auth.method
        if method == "token":
            lease = self._token_lookup()
        elif method == "approle":
            lease = self._approle_login()
        elif method == "kubernetes":
            role = self._required(self._auth.role, "role")
            jwt = self._read_credential(self._auth.jwt_file or DEFAULT_KUBERNETES_JWT, "jwt")
            lease = self._login(
                "kubernetes login",
                lambda: self._client.auth.kubernetes.login(
                    role=role, jwt=jwt, mount_point=self._auth.mount_path
                ),
                jwt,
            )
        else:
            role = self._required(self._auth.role, "role")
            jwt_file = self._required(self._auth.jwt_file, "jwt_file")
            jwt = self._read_credential(jwt_file, "jwt")
            lease = self._login(
                "jwt login",
                lambda: self._client.auth.jwt.jwt_login(
                    role=role, jwt=jwt, path=self._auth.mount_path
                ),
                jwt,
            )
        self._lease = lease
        self._renew_failures = 0
        self._wake.notify_all()
        get_logger().info(
            "vault.authenticated" if reason == "initial" else "vault.reauthenticated",
            source=self.name,
            auth_method=method,
            reason=reason,
            ttl_s=lease.ttl,
            renewable=lease.renewable,
        )

    def _token_valid(self) -> bool:
        """Whether Vault still accepts the current token (after a 403 on a read)."""
        try:
            with self._step("looking up the token"):
                self._client.auth.token.lookup_self()
        except AccessLostError:
            return False  # revoked or expired (or lookup-self denied: logging in is harmless)
        return True

    def _configured_token(self) -> str:
        if self._auth.token_file is not None:
            return self._read_credential(self._auth.token_file, "token")
        token = os.environ.get("VAULT_TOKEN", "").strip()
        if not token:
            raise PermanentSourceError(
                "auth method 'token' needs token_file or the VAULT_TOKEN variable",
                code="credentials_unavailable",
            )
        return token

    def _token_lookup(self) -> _Lease:
        token = self._configured_token()
        self._token = _Secret(token)
        self._client.token = token
        with self._step("looking up the token", login=True):
            response = self._client.auth.token.lookup_self()
        data = _mapping(_mapping(response, "response").get("data"), "token data")
        ttl = float(data.get("ttl") or 0)
        return _Lease(ttl, bool(data.get("renewable")), _clock(), ttl)

    def _approle_login(self) -> _Lease:
        role_id_file = self._required(self._auth.role_id_file, "role_id_file")
        secret_id_file = self._required(self._auth.secret_id_file, "secret_id_file")
        # Re-read the files when they exist (Vault Agent may write new ones); otherwise use
        # what was read before: the secret id file may be deleted after reading.
        if role_id_file.exists() or self._role_id is None:
            self._role_id = _Secret(self._read_credential(role_id_file, "role id"))
        if secret_id_file.exists() or self._secret_id is None:
            self._secret_id = _Secret(self._read_credential(secret_id_file, "secret id"))
            if self._auth.remove_secret_id_file_after_reading:
                try:
                    secret_id_file.unlink()
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    get_logger().warning(
                        "vault.secret_id_file_not_removed",
                        source=self.name,
                        path=str(secret_id_file),
                        reason=exc.strerror,
                    )
        role_id, secret_id = self._role_id.value, self._secret_id.value
        return self._login(
            "approle login",
            lambda: self._client.auth.approle.login(
                role_id=role_id, secret_id=secret_id, mount_point=self._auth.mount_path
            ),
            role_id,
            secret_id,
        )

    def _login(self, doing: str, call: Callable[[], Any], *credentials: str) -> _Lease:
        with self._step(f"{doing} at auth/{self._auth.mount_path}", login=True, extra=credentials):
            response = call()
        auth = _mapping(_mapping(response, "response").get("auth"), "login response")
        token = auth.get("client_token")
        if not isinstance(token, str) or not token:
            raise TransientSourceError(
                f"{doing}: no client token in the response", code="bad_login"
            )
        self._token = _Secret(token)
        ttl = float(auth.get("lease_duration") or 0)
        return _Lease(ttl, bool(auth.get("renewable")), _clock(), ttl)

    def _read_credential(self, path: Path, what: str) -> str:
        try:
            value = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            raise PermanentSourceError(
                f"{what} file {path} does not exist", code="credentials_unavailable"
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
            raise PermanentSourceError(
                f"cannot read {what} file {path}: {reason}", code="credentials_unavailable"
            ) from None
        if not value:
            raise PermanentSourceError(
                f"{what} file {path} is empty", code="credentials_unavailable"
            )
        return value

    def _required(self, value: T | None, key: str) -> T:
        if value is None:
            raise PermanentSourceError(
                f"auth method {self._auth.method!r} needs auth.{key}", code="auth_config"
            )
        return value

    # -- renewal -------------------------------------------------------------------------

    def _start_renewer(self) -> None:
        if self._renewer is None and not self._closing.is_set():
            self._renewer = threading.Thread(
                target=self._renew_loop, name=f"sidkeyd-vault-renew-{self.name}", daemon=True
            )
            self._renewer.start()

    def _renew_loop(self) -> None:
        with self._lock:
            while not self._closing.is_set():
                delay = self._renewal_delay(_clock())
                if delay is None or delay > 0:
                    self._wake.wait(delay)  # woken early by a new lease or close()
                    continue
                try:
                    self._renew_or_reauthenticate()
                except SourceError as exc:
                    self._renew_failures += 1
                    get_logger().warning(
                        "vault.token_renewal_failed",
                        source=self.name,
                        auth_method=self._auth.method,
                        error_kind=exc.kind,
                        error_code=exc.code,
                        reason=exc.reason,
                        consecutive_failures=self._renew_failures,
                    )
                except Exception as exc:  # a bug here must not kill the renewer silently
                    self._renew_failures += 1
                    get_logger().error(
                        "vault.token_renewal_failed",
                        source=self.name,
                        error_code="renewer_bug",
                        reason=type(exc).__name__,
                    )

    def _renewal_delay(self, now: float) -> float | None:
        """Seconds until the renewer should act; ``None`` to wait for a new lease."""
        lease = self._lease
        if lease is None or not lease.expires:
            return None
        if not lease.renewable and self._auth.method == "token":
            # Nothing to renew and no way to log in: the read after expiry re-reads the token.
            return None
        if self._renew_failures:
            return retry_delay(self._renew_failures, lease.remaining(now))
        return lease.renew_at() - now

    def _renew_or_reauthenticate(self) -> None:
        lease = self._lease
        assert lease is not None
        can_login = self._auth.method != "token"
        if lease.remaining(_clock()) <= 0:
            self._authenticate("token_expired")
            return
        if not lease.renewable:
            self._authenticate("not_renewable")
            return
        try:
            with self._step("renewing the token"):
                response = self._client.auth.token.renew_self()
        except PermanentSourceError as exc:
            if exc.code not in ("access_denied", "invalid_request"):
                raise
            # Revoked (403), or past its max TTL / not renewable after all (400).
            self._authenticate("renewal_refused")
            return
        auth = _mapping(_mapping(response, "response").get("auth"), "renewal response")
        granted = float(auth.get("lease_duration") or 0)
        self._lease = _Lease(granted, bool(auth.get("renewable")), _clock(), lease.login_ttl)
        self._renew_failures = 0
        get_logger().info(
            "vault.token_renewed", source=self.name, auth_method=self._auth.method, ttl_s=granted
        )
        # The max TTL caps the renewal: log in again. With a token from a file or VAULT_TOKEN,
        # switch only once Vault Agent has written a new one.
        if granted >= lease.login_ttl:
            return
        if not can_login:
            held = self._token.value if self._token is not None else None
            try:
                configured = self._configured_token()
            except SourceError:
                return  # token_file missing for now: not a failed renewal; looked at next time
            if configured == held:
                return
        self._authenticate("max_ttl")

    # -- plumbing ------------------------------------------------------------------------

    @contextmanager
    def _step(
        self, doing: str, *, login: bool = False, extra: tuple[str, ...] = ()
    ) -> Iterator[None]:
        """Translate library errors raised inside into ``SourceError``, naming the step."""
        try:
            yield
        except TRANSLATED as exc:
            method = self._auth.method if login else None
            raise translate(exc, doing, login=method, secrets=self._secrets() + extra) from exc

    def _secrets(self) -> tuple[str, ...]:
        held = (self._token, self._role_id, self._secret_id)
        return tuple(s.value for s in held if s is not None)

    @staticmethod
    def _make_client(config: VaultSourceConfig) -> hvac.Client:
        session = requests.Session()
        verify: bool | str = (
            str(config.ca_cert) if config.verify and config.ca_cert else config.verify
        )
        cert: tuple[str, str] | None = None
        if config.client_cert is not None:
            key = config.client_key or config.client_cert
            cert = (str(config.client_cert), str(key))
        session.verify = verify
        session.cert = cert
        session.trust_env = False  # no proxies or CA bundles from the environment
        if config.tls_server_name:
            session.mount("https://", _ServerNameAdapter(config.tls_server_name))
        return hvac.Client(
            url=config.url,
            token="",  # never VAULT_TOKEN or ~/.vault-token implicitly
            verify=verify,
            cert=cert,
            # requests takes float seconds; the stub says int.
            timeout=cast("int", config.timeout.total_seconds()),
            namespace=config.namespace,
            session=session,
            adapter=_Adapter,
            configured_cert=cert,
        )


def retry_delay(failures: int, remaining: float) -> float:
    """Seconds before the renewer tries again after ``failures`` consecutive failures.

    Exponential backoff, 1s doubling to 60s. While the token is still valid, never later than
    halfway to its expiry (nor sooner than 1s); once it has expired, the plain backoff.
    """
    backoff = min(BACKOFF_MAX_S, BACKOFF_MIN_S * 2.0 ** min(failures - 1, 16))
    if remaining <= 0:
        return backoff
    return max(BACKOFF_MIN_S, min(backoff, remaining / 2))


def _mapping(value: object, what: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise InvalidSecretError(f"{what} is not a JSON object", code="malformed_payload")
    return cast("Mapping[str, Any]", value)


def _deleted_by(version: Mapping[str, Any], now: datetime) -> bool:
    """Whether a KV v2 version's ``deletion_time`` has come by ``now``.

    With ``delete_version_after`` on the mount or secret, every version carries a deletion time
    in the future: not deleted yet. One that cannot be read counts as passed.
    """
    stamp = version.get("deletion_time")
    if not stamp:
        return False
    try:
        when = datetime.fromisoformat(str(stamp))
    except ValueError:
        return True
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when <= now


def _metadata_of_missing_version(exc: BaseException | None) -> Mapping[str, Any] | None:
    """The 404 body of a deleted or destroyed KV v2 version, which still names the version."""
    if not isinstance(exc, hvac_errors.InvalidPath) or not isinstance(exc.json, dict):
        return None
    data = exc.json.get("data")
    metadata = data.get("metadata") if isinstance(data, dict) else None
    if isinstance(metadata, dict) and (metadata.get("deletion_time") or metadata.get("destroyed")):
        return cast("Mapping[str, Any]", exc.json)
    return None
