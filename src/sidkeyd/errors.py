"""sidkeyd's exceptions: every class the daemon, the CLI and the client raise on purpose.

The tree::

    SidkeydError
    ├── ConfigError                 the config file is unusable; carries every problem found
    ├── SourceError                 a backend gave no usable key (never carries key material)
    │   ├── TransientSourceError    throttling, 5xx, timeouts, connection errors: retry with backoff
    │   └── PermanentSourceError    retrying as-is will not help: fix the backend or the config
    │       ├── AccessLostError     access denied, secret not found or deleted: this host is cut off
    │       └── InvalidSecretError  the secret exists but its payload is unusable
    ├── KeyUnavailableError         no usable key for an environment right now (code says why)
    ├── StartupError                the daemon cannot start serving (``cli`` exits 3)
    │   ├── SocketInUseError        another live daemon answers on the socket path
    │   ├── UnsafeSocketPathError   the socket path or its folder is unsafe to bind
    │   ├── SocketFolderError       the filesystem refused a step of making the socket (names it)
    │   └── HardeningError          a hardening step the config asks for failed (also OSError)
    ├── RequestError                one request is refused; caught where raised, it becomes the
    │   │                           response (status, code, message), never escapes the daemon
    │   ├── BadRequest              the app's refusals: bad JSON, fields, policy, rate limit
    │   ├── FramingError            the transport's: HTTP that cannot be framed (then close)
    │   ├── TimestampError          a caller's timestamp is refused (also ValueError)
    │   └── SmileIdError            Smile ID's V3 token endpoint gave no token (502/503/504)
    └── ClientError                 raised by sidkeyd.client and sidkeyd.aio
        ├── DaemonUnavailableError  the socket cannot be reached
        ├── RequestFailedError      the daemon answered with an error (status, code, message)
        └── PartnerMismatchError    a Signature's partner_id is not the daemon's for that env

Library errors (botocore, hvac, OSError from a backend) are translated into ``SourceError``
subclasses at the adapter boundary with ``raise ... from exc``. Messages never include key
material: only names, versions, fingerprints and reasons; a backend's own words pass through
``redaction.backend_text`` first, and the engine scrubs every key it knows (``scrub``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sidkeyd.redaction import scrub


class SidkeydError(Exception):
    """Base of every error sidkeyd raises on purpose."""


@dataclass(frozen=True)
class ConfigProblem:
    """One problem in a config file: the dotted TOML key path and why it is wrong."""

    key: str
    reason: str

    def __str__(self) -> str:
        return f"{self.key}: {self.reason}"


class ConfigError(SidkeydError):
    """The config cannot be used. ``problems`` lists every problem found, not just the first."""

    def __init__(self, problems: Sequence[ConfigProblem]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(str(p) for p in self.problems))


class SourceError(SidkeydError):
    """A source could not produce a usable key for an environment."""

    kind = "source"

    def __init__(self, reason: str, *, code: str = "source_error") -> None:
        self.reason = reason
        self.code = code
        super().__init__(reason)

    def scrub(self, secrets: Iterable[str]) -> None:
        """Replace every one of ``secrets`` in the reason: the engine knows keys sources do not."""
        self.reason = scrub(self.reason, secrets)
        self.args = (self.reason,)


class TransientSourceError(SourceError):
    """Expected to go away by itself; keep the last good key and retry with backoff."""

    kind = "transient"


class PermanentSourceError(SourceError):
    """Will not go away by retrying; keep the last good key within its budget and say so loudly."""

    kind = "permanent"


class AccessLostError(PermanentSourceError):
    """This host lost access to the secret (denied, not found, deleted)."""


class InvalidSecretError(PermanentSourceError):
    """The secret was read but its payload is not a usable key."""


class KeyUnavailableError(SidkeydError):
    """No key may be used for an environment now: ``no_key``, ``key_stale``, ``key_revoked``."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(message)


class StartupError(SidkeydError):
    """The daemon cannot start serving."""


class SocketInUseError(StartupError):
    """Another daemon answers on the configured socket path."""


class UnsafeSocketPathError(StartupError):
    """The socket path is not safe to bind (not a socket, a symlink, an open folder...)."""


class SocketFolderError(StartupError):
    """A filesystem call making the socket failed: the message names the path and the ids."""


class HardeningError(StartupError, OSError):
    """A hardening step that the config asked for failed."""


class RequestError(SidkeydError):
    """One request is refused: ``status``, ``code`` and ``message`` make its error response."""

    def __init__(
        self,
        code: str,
        message: str,
        status: int = 400,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self.code = code
        self.message = message
        self.status = status
        self.headers = headers
        super().__init__(message)


class BadRequest(RequestError):
    """The app refuses a request (JSON, fields, environment, policy, rate limit)."""


class FramingError(RequestError):
    """The request cannot be framed as HTTP/1.1: answer, then close the connection."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(code, message, status)


class SmileIdError(RequestError):
    """Smile ID's ``POST /v3/token`` gave no token; ``refused`` when it refused the key."""

    def __init__(self, code: str, message: str, status: int = 502, *, refused: bool = False):
        super().__init__(code, message, status)
        self.refused = refused


class TimestampError(RequestError, ValueError):
    """A caller-supplied timestamp is refused; the message says why."""

    def __init__(self, message: str) -> None:
        super().__init__("invalid_timestamp", message)


class ClientError(SidkeydError):
    """Base of the errors raised by ``sidkeyd.client``."""


class DaemonUnavailableError(ClientError):
    """The daemon's socket could not be reached or the connection broke."""


class RequestFailedError(ClientError):
    """The daemon answered with an error response."""

    def __init__(self, status: int, code: str, message: str) -> None:
        self.status = status
        self.code = code
        self.message = message
        super().__init__(f"{status} {code}: {message}")


class PartnerMismatchError(ClientError):
    """The caller's partner_id is not the one sidkeyd signs with for that environment."""
