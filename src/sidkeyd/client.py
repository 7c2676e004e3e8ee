"""A small client for sidkeyd's socket: standard library only, so any service can import it.

``Signature`` mirrors the official smile-id-core class so existing code switches by changing
one import; ``Client`` is the lower level, one keep-alive connection shared safely by threads.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from sidkeyd.defaults import DEFAULT_SOCKET_PATH
from sidkeyd.errors import (
    ClientError,
    DaemonUnavailableError,
    PartnerMismatchError,
    RequestFailedError,
)
from sidkeyd.status import EnvironmentStatus

__all__ = [
    "DEFAULT_SOCKET_PATH",
    "Client",
    "ClientError",
    "DaemonUnavailableError",
    "EnvironmentStatus",
    "PartnerMismatchError",
    "RequestFailedError",
    "Signature",
    "placeholder_key",
]

T = TypeVar("T")


def status_of(response: object) -> int | None:
    """The HTTP status of a requests/httpx/urllib response, or None."""
    for attribute in ("status_code", "status", "code"):
        value = getattr(response, attribute, None)
        if isinstance(value, int):
            return value
    return None


def is_unauthorized(response: object) -> bool:
    return status_of(response) == 401


def default_socket_path() -> str:
    return os.environ.get("SIDKEYD_SOCKET") or str(DEFAULT_SOCKET_PATH)


def encode_request(method: str, path: str, body: dict[str, Any] | None) -> bytes:
    payload = b"" if body is None else json.dumps(body).encode("utf-8")
    head = f"{method} {path} HTTP/1.1\r\nHost: sidkeyd\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
    return head.encode("ascii") + b"\r\n" + payload


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    """The status and the (lower-cased) headers of a response head without its blank line."""
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


def ok_payload(status: int, payload: dict[str, Any]) -> dict[str, Any]:
    if status != 200:
        error = payload.get("error")
        error = error if isinstance(error, dict) else {}
        raise RequestFailedError(
            status, str(error.get("code", "unknown")), str(error.get("message", ""))
        )
    return payload


MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 1024 * 1024


class _NotTheProtocol(Exception):
    """The answer is not the daemon's HTTP/JSON: never carries the answer itself."""


class Client:
    """HTTP/1.1 over the daemon's Unix socket, one persistent connection, thread-safe."""

    def __init__(self, socket_path: str | os.PathLike[str] | None = None, timeout: float = 5.0):
        self.socket_path = os.fspath(socket_path) if socket_path else default_socket_path()
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buffer = b""
        self._lock = threading.Lock()

    # -- API -----------------------------------------------------------------------------

    def sign(self, environment: str, timestamp: str | None = None) -> dict[str, Any]:
        body: dict[str, str] = {"environment": environment}
        if timestamp is not None:
            body["timestamp"] = timestamp
        return self._ok(*self.request("POST", "/v1/sign", body))

    def verify(self, environment: str, timestamp: str, signature: str) -> dict[str, Any]:
        body = {"environment": environment, "timestamp": timestamp, "signature": signature}
        return self._ok(*self.request("POST", "/v1/verify", body))

    def status(self) -> dict[str, Any]:
        """The raw ``GET /v1/status`` answer (``{"environments": {name: {...}}}``)."""
        return self._ok(*self.request("GET", "/v1/status"))

    def environments(self) -> dict[str, EnvironmentStatus]:
        """The status of each environment, typed (fields a non-admin may not see are None)."""
        return {
            name: EnvironmentStatus.from_json(name, data)
            for name, data in self.status()["environments"].items()
        }

    def health(self) -> tuple[bool, dict[str, Any]]:
        status, payload = self.request("GET", "/v1/health")
        return status == 200, payload

    def report(self, environment: str, key_version: str, status: int | str) -> dict[str, Any]:
        """Tell the daemon Smile ID rejected a signature; the answer names the key to use now."""
        body = {"environment": environment, "key_version": key_version, "status": status}
        return self._ok(*self.request("POST", "/v1/report", body))

    def send_signed(
        self,
        environment: str,
        send: Callable[[dict[str, Any]], T],
        *,
        rejected: Callable[[T], bool] = is_unauthorized,
    ) -> T:
        """Sign, ``send(signed)``; if Smile ID rejected it, report, sign again and retry once.

        A key rotated at Smile ID is disabled at once: the report makes the daemon check its
        backend now, so the retry is signed with the new key.
        """
        signed = self.sign(environment)
        result = send(signed)
        if not rejected(result):
            return result
        status = status_of(result)
        self.report(
            environment, signed["key_version"], status if status is not None else "rejected"
        )
        return send(self.sign(environment))

    def token(self, environment: str) -> dict[str, Any]:
        """A Smile ID V3 token: ``{"token", "expires_at", "environment", "key_version"}``."""
        return self._ok(*self.request("POST", "/v1/token", {"environment": environment}))

    def report_token(self, environment: str, status: int | str = 401) -> dict[str, Any]:
        """Tell the daemon Smile ID refused a token it gave: the next one is fresh."""
        body = {"environment": environment, "kind": "token", "status": status}
        return self._ok(*self.request("POST", "/v1/report", body))

    def refresh(self, environment: str | None = None) -> dict[str, Any]:
        body = {"environment": environment} if environment else {}
        return self._ok(*self.request("POST", "/v1/refresh", body))

    def close(self) -> None:
        with self._lock:
            self._disconnect()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- HTTP ----------------------------------------------------------------------------

    def request(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> tuple[int, dict[str, Any]]:
        message = encode_request(method, path, body)
        with self._lock:
            # A kept-alive connection may have been closed by the daemon (idle timeout,
            # restart): one retry on a fresh connection when nothing came back.
            for attempt in (1, 2):
                fresh = self._sock is None
                try:
                    sock = self._connect()
                    sock.sendall(message)
                    return self._read_response(sock)
                except (_ConnectionDropped, BrokenPipeError, ConnectionResetError) as exc:
                    # Nothing came back: the request was not handled; safe to send again.
                    self._disconnect()
                    if fresh or attempt == 2:
                        reason = (
                            "closed the connection"
                            if isinstance(exc, _ConnectionDropped)
                            else f"cannot be reached: {exc.strerror or exc}"
                        )
                        raise DaemonUnavailableError(
                            f"sidkeyd at {self.socket_path} {reason}"
                        ) from exc
                except DaemonUnavailableError:
                    self._disconnect()  # closed mid-answer: the connection is no good
                    raise
                except _NotTheProtocol:
                    self._disconnect()  # what is left in the buffer cannot be trusted either
                    raise DaemonUnavailableError(
                        f"sidkeyd at {self.socket_path} answered something that is not its protocol"
                    ) from None
                except OSError as exc:  # a timeout after sending: no retry, it may have run
                    self._disconnect()
                    raise DaemonUnavailableError(
                        f"sidkeyd at {self.socket_path} cannot be reached: {exc.strerror or exc}"
                    ) from exc
        raise AssertionError("unreachable")

    def _connect(self) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(self.socket_path)
            except OSError:
                sock.close()
                raise
            self._sock, self._buffer = sock, b""
        return self._sock

    def _disconnect(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock, self._buffer = None, b""

    def _read_response(self, sock: socket.socket) -> tuple[int, dict[str, Any]]:
        head = self._read_until(sock, b"\r\n\r\n", got_any=False)
        try:
            status, headers = parse_head(head)
            length = int(headers.get("content-length", "0"))
        except (ValueError, IndexError):
            raise _NotTheProtocol() from None
        if not 0 <= length <= MAX_BODY_BYTES:
            raise _NotTheProtocol()
        while len(self._buffer) < length:
            self._recv(sock, got_any=True)
        body, self._buffer = self._buffer[:length], self._buffer[length:]
        if headers.get("connection", "").lower() == "close":
            self._disconnect()
        try:
            payload = json.loads(body) if body else {}
        except ValueError:
            raise _NotTheProtocol() from None  # the error would carry the body (a token)
        if not isinstance(payload, dict):
            raise _NotTheProtocol()
        return status, payload

    def _read_until(self, sock: socket.socket, marker: bytes, *, got_any: bool) -> bytes:
        while marker not in self._buffer:
            if len(self._buffer) > MAX_HEAD_BYTES:
                raise _NotTheProtocol()
            self._recv(sock, got_any=got_any or bool(self._buffer))
        head, _, self._buffer = self._buffer.partition(marker)
        return head

    def _recv(self, sock: socket.socket, *, got_any: bool) -> None:
        chunk = sock.recv(65536)
        if not chunk:
            if got_any:
                raise DaemonUnavailableError("sidkeyd closed the connection mid-response")
            raise _ConnectionDropped()
        self._buffer += chunk

    _ok = staticmethod(ok_payload)


class _ConnectionDropped(Exception):
    """The daemon closed a kept-alive connection before answering."""


PLACEHOLDER_PREFIX = "sidkeyd:"
ENVIRONMENT_VARIABLE = "SIDKEYD_ENVIRONMENT"


def placeholder_key(environment: str) -> str:
    """The api_key to give an SDK in place of a key: it names the environment, nothing more."""
    return PLACEHOLDER_PREFIX + environment


def resolve_environment(environment: str | None, api_key: object) -> str:
    """``environment=``, else ``$SIDKEYD_ENVIRONMENT``, else a ``sidkeyd:<env>`` api_key.

    ``api_key`` is only inspected for the placeholder prefix: never kept, never shown.
    """
    if environment:
        return environment
    from_env = os.environ.get(ENVIRONMENT_VARIABLE)
    if from_env:
        return from_env
    if isinstance(api_key, str) and api_key.startswith(PLACEHOLDER_PREFIX):
        named = api_key.removeprefix(PLACEHOLDER_PREFIX)
        if named:
            return named
    raise ClientError(
        "no sidkeyd environment: pass environment=..., set $SIDKEYD_ENVIRONMENT, or give "
        f"the placeholder api_key {placeholder_key('<environment>')!r}"
    )


def check_partner(expected: str | None, environment: str, actual: object) -> None:
    """A caller that names its partner_id must name the daemon's, or every signature is wrong."""
    if expected is not None and str(expected) != str(actual):
        raise PartnerMismatchError(
            f"partner_id {str(expected)!r} does not match sidkeyd's environment "
            f"{environment!r}, which signs for partner_id {str(actual)!r}"
        )


class Signature:
    """Drop-in for smile-id-core's ``Signature``: signatures come from sidkeyd, not a local key.

    Takes every call form of smile-id-core 3.x (``Signature(partner_id, api_key)``, keywords,
    ``confirm_signature(timestamp, msg_signature)``). ``api_key`` is never stored, sent or
    shown; it may be the placeholder ``"sidkeyd:<environment>"``.
    """

    def __init__(
        self,
        partner_id: str | None = None,
        api_key: str | None = None,
        *,
        environment: str | None = None,
        socket: str | os.PathLike[str] | None = None,
        client: Client | None = None,
    ) -> None:
        self.environment = resolve_environment(environment, api_key)
        self.partner_id = None if partner_id is None else str(partner_id)
        self._client = client or Client(socket)
        self._partner_checked = self.partner_id is None

    def __repr__(self) -> str:
        return f"Signature(environment={self.environment!r}, partner_id={self.partner_id!r})"

    def sign(self, timestamp: str | None = None) -> dict[str, Any]:
        """The daemon's whole answer (``key_version`` included), partner_id checked."""
        signed = self._client.sign(self.environment, timestamp)
        check_partner(self.partner_id, self.environment, signed.get("partner_id"))
        self._partner_checked = True
        return signed

    def generate_signature(self, timestamp: str | None = None) -> dict[str, str]:
        """``{"signature", "timestamp"}``; without a timestamp the daemon makes one (UTC, ms, Z)."""
        signed = self.sign(timestamp)
        return {"signature": signed["signature"], "timestamp": signed["timestamp"]}

    def confirm_signature(
        self, timestamp: str, msg_signature: str | None = None, *, signature: str | None = None
    ) -> bool:
        """True when the daemon's key signed ``timestamp`` (``signature=`` is the old name)."""
        given = msg_signature if msg_signature is not None else signature
        if given is None:
            raise TypeError("confirm_signature() needs the signature to check (msg_signature)")
        if not self._partner_checked:
            self._check_partner_by_status()
        return bool(self._client.verify(self.environment, timestamp, given)["valid"])

    def _check_partner_by_status(self) -> None:
        environments = self._client.status()["environments"]
        held = environments.get(self.environment, {}).get("partner_id")
        if held is not None:  # an unknown environment: verify answers with its own error
            check_partner(self.partner_id, self.environment, held)
            self._partner_checked = True
