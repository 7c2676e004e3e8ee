"""The Vault source's login methods, one small piece each (after Vault Agent's auth methods).

A method turns its credentials into a ``Lease`` (a token and what Vault said about it) and
says which credentials it holds, so that error text can be scrubbed of them. It keeps no token
and makes no decision about when to log in: ``auth.TokenLifecycle`` does.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar

import hvac

from sidkeyd.config import VaultAuthConfig
from sidkeyd.errors import PermanentSourceError, SourceError, TransientSourceError
from sidkeyd.held import HeldSecret
from sidkeyd.log import get_logger
from sidkeyd.sources.vault.errors import mapping, translating

DEFAULT_KUBERNETES_JWT = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
RENEW_AT_FRACTION: Final = 2 / 3

T = TypeVar("T")
Secrets = Callable[[], tuple[str, ...]]

# Token lifetimes run on a clock that keeps counting while the host is suspended: Linux's
# CLOCK_BOOTTIME. time.monotonic() stops during a suspend there, so a token that expired while
# the host slept would look valid after the resume. Elsewhere, monotonic.
_BOOTTIME: Final = getattr(time, "CLOCK_BOOTTIME", None)


def clock() -> float:
    """Seconds on the token-lifetime clock (CLOCK_BOOTTIME where available)."""
    if _BOOTTIME is not None:
        return time.clock_gettime(_BOOTTIME)
    return time.monotonic()


@dataclass(frozen=True)
class Lease:
    """A token and what Vault said about it; replaced whole, never changed."""

    token: HeldSecret
    ttl: float  # seconds granted at the last login or renewal; 0 means it never expires
    renewable: bool
    obtained_at: float  # clock() when granted
    login_ttl: float  # TTL granted at login: a renewal granting less means max TTL is near

    @property
    def expires(self) -> bool:
        return self.ttl > 0

    def remaining(self, now: float) -> float:
        return self.obtained_at + self.ttl - now

    def renew_at(self) -> float:
        return self.obtained_at + self.ttl * RENEW_AT_FRACTION


def lease_from(body: Mapping[str, Any], token: str, ttl_field: str) -> Lease:
    ttl = float(body.get(ttl_field) or 0)
    return Lease(HeldSecret(token), ttl, bool(body.get("renewable")), clock(), ttl)


class LoginMethod(Protocol):
    """One ``auth.method``."""

    name: str
    # False for ``token``: "logging in" only re-reads a token another process wrote.
    logs_in: bool

    def login(self, client: hvac.Client, secrets: Secrets) -> Lease:
        """A fresh token; ``client`` uses it from now on. Raises only ``SourceError``."""
        ...

    def new_token_available(self, held: str) -> bool:
        """Whether a login now would bring a token other than ``held``."""
        ...

    def credentials(self) -> tuple[str, ...]:
        """The credentials held for the next login (to scrub from error text)."""
        ...

    def forget(self) -> None:
        """Drop every credential held."""
        ...


class _Method:
    """What the methods share: their config, credential files and the login call."""

    logs_in = True

    def __init__(self, auth: VaultAuthConfig, source_name: str) -> None:
        self.name: str = auth.method
        self._auth = auth
        self._source_name = source_name

    def new_token_available(self, held: str) -> bool:
        return True

    def credentials(self) -> tuple[str, ...]:
        return ()

    def forget(self) -> None:
        return None

    def _login(
        self, doing: str, call: Callable[[], Any], secrets: Secrets, *credentials: str
    ) -> Lease:
        where = f"{doing} at auth/{self._auth.mount_path}"
        with translating(where, lambda: secrets() + credentials, login=self.name):
            response = call()
        auth = mapping(mapping(response, "response").get("auth"), "login response")
        token = auth.get("client_token")
        if not isinstance(token, str) or not token:
            raise TransientSourceError(
                f"{doing}: no client token in the response", code="bad_login"
            )
        return lease_from(auth, token, "lease_duration")

    def _required(self, value: T | None, key: str) -> T:
        if value is None:
            raise PermanentSourceError(
                f"auth method {self.name!r} needs auth.{key}", code="auth_config"
            )
        return value


def read_credential(path: Path, what: str) -> str:
    """A credential file's stripped text; ``credentials_unavailable`` if missing or empty."""
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
        raise PermanentSourceError(f"{what} file {path} is empty", code="credentials_unavailable")
    return value


class TokenLogin(_Method):
    """``token``: the token in ``token_file`` (Vault Agent rewrites it) or ``VAULT_TOKEN``."""

    logs_in = False

    def login(self, client: hvac.Client, secrets: Secrets) -> Lease:
        token = self._configured_token()
        client.token = token
        with translating("looking up the token", lambda: (*secrets(), token), login=self.name):
            response = client.auth.token.lookup_self()
        data = mapping(mapping(response, "response").get("data"), "token data")
        return lease_from(data, token, "ttl")

    def new_token_available(self, held: str) -> bool:
        try:
            return self._configured_token() != held
        except SourceError:
            return False  # token_file missing for now: looked at again next time

    def _configured_token(self) -> str:
        if self._auth.token_file is not None:
            return read_credential(self._auth.token_file, "token")
        token = os.environ.get("VAULT_TOKEN", "").strip()
        if not token:
            raise PermanentSourceError(
                "auth method 'token' needs token_file or the VAULT_TOKEN variable",
                code="credentials_unavailable",
            )
        return token


class AppRoleLogin(_Method):
    """``approle``: a role id and a secret id, each from a file."""

    def __init__(self, auth: VaultAuthConfig, source_name: str) -> None:
        super().__init__(auth, source_name)
        self._role_id: HeldSecret | None = None
        self._secret_id: HeldSecret | None = None

    def login(self, client: hvac.Client, secrets: Secrets) -> Lease:
        role_id_file = self._required(self._auth.role_id_file, "role_id_file")
        secret_id_file = self._required(self._auth.secret_id_file, "secret_id_file")
        # Re-read the files when they exist (Vault Agent may write new ones); otherwise use
        # what was read before: the secret id file may be deleted after reading.
        if role_id_file.exists() or self._role_id is None:
            self._role_id = HeldSecret(read_credential(role_id_file, "role id"))
        if secret_id_file.exists() or self._secret_id is None:
            self._secret_id = HeldSecret(read_credential(secret_id_file, "secret id"))
            if self._auth.remove_secret_id_file_after_reading:
                self._remove(secret_id_file)
        role_id, secret_id = self._role_id.reveal(), self._secret_id.reveal()
        return self._login(
            "approle login",
            lambda: client.auth.approle.login(
                role_id=role_id, secret_id=secret_id, mount_point=self._auth.mount_path
            ),
            secrets,
            role_id,
            secret_id,
        )

    def credentials(self) -> tuple[str, ...]:
        return tuple(s.reveal() for s in (self._role_id, self._secret_id) if s is not None)

    def forget(self) -> None:
        self._role_id = self._secret_id = None

    def _remove(self, secret_id_file: Path) -> None:
        try:
            secret_id_file.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            get_logger().warning(
                "vault.secret_id_file_not_removed",
                source=self._source_name,
                path=str(secret_id_file),
                reason=exc.strerror,
            )


class KubernetesLogin(_Method):
    """``kubernetes``: the service account's JWT, read afresh for each login."""

    def login(self, client: hvac.Client, secrets: Secrets) -> Lease:
        role = self._required(self._auth.role, "role")
        jwt = read_credential(self._auth.jwt_file or DEFAULT_KUBERNETES_JWT, "jwt")
        return self._login(
            "kubernetes login",
            lambda: client.auth.kubernetes.login(
                role=role, jwt=jwt, mount_point=self._auth.mount_path
            ),
            secrets,
            jwt,
        )


class JwtLogin(_Method):
    """``jwt``: a JWT from ``jwt_file``, read afresh for each login."""

    def login(self, client: hvac.Client, secrets: Secrets) -> Lease:
        role = self._required(self._auth.role, "role")
        jwt = read_credential(self._required(self._auth.jwt_file, "jwt_file"), "jwt")
        return self._login(
            "jwt login",
            lambda: client.auth.jwt.jwt_login(role=role, jwt=jwt, path=self._auth.mount_path),
            secrets,
            jwt,
        )


def login_method(auth: VaultAuthConfig, source_name: str) -> LoginMethod:
    """The piece for ``auth.method``."""
    methods: dict[str, Callable[[VaultAuthConfig, str], LoginMethod]] = {
        "token": TokenLogin,
        "approle": AppRoleLogin,
        "kubernetes": KubernetesLogin,
        "jwt": JwtLogin,
    }
    return methods[auth.method](auth, source_name)
