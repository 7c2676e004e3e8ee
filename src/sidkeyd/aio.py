"""The asyncio client: ``AsyncClient`` and ``AsyncSignature``, standard library only.

The same API as ``sidkeyd.client`` with coroutines: one keep-alive connection per client,
requests on it serialised by a lock (HTTP/1.1 answers come in order), reconnected once when the
daemon closed it while idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sidkeyd.client import (
    MAX_BODY_BYTES,
    check_partner,
    default_socket_path,
    encode_request,
    is_unauthorized,
    ok_payload,
    parse_head,
    resolve_environment,
    status_of,
)
from sidkeyd.errors import DaemonUnavailableError

__all__ = ["AsyncClient", "AsyncSignature"]

T = TypeVar("T")


class _Dropped(Exception):
    """The daemon closed a kept-alive connection before answering."""


class AsyncClient:
    """HTTP/1.1 over the daemon's Unix socket from asyncio; safe to share between tasks."""

    def __init__(self, socket_path: str | os.PathLike[str] | None = None, timeout: float = 5.0):
        self.socket_path = os.fspath(socket_path) if socket_path else default_socket_path()
        self.timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()

    async def sign(self, environment: str, timestamp: str | None = None) -> dict[str, Any]:
        body: dict[str, str] = {"environment": environment}
        if timestamp is not None:
            body["timestamp"] = timestamp
        return ok_payload(*await self.request("POST", "/v1/sign", body))

    async def verify(self, environment: str, timestamp: str, signature: str) -> dict[str, Any]:
        body = {"environment": environment, "timestamp": timestamp, "signature": signature}
        return ok_payload(*await self.request("POST", "/v1/verify", body))

    async def status(self) -> dict[str, Any]:
        return ok_payload(*await self.request("GET", "/v1/status"))

    async def health(self) -> tuple[bool, dict[str, Any]]:
        status, payload = await self.request("GET", "/v1/health")
        return status == 200, payload

    async def report(self, environment: str, key_version: str, status: int | str) -> dict[str, Any]:
        body = {"environment": environment, "key_version": key_version, "status": status}
        return ok_payload(*await self.request("POST", "/v1/report", body))

    async def token(self, environment: str) -> dict[str, Any]:
        """A Smile ID V3 token: ``{"token", "expires_at", "environment", "key_version"}``."""
        return ok_payload(*await self.request("POST", "/v1/token", {"environment": environment}))

    async def report_token(self, environment: str, status: int | str = 401) -> dict[str, Any]:
        """Tell the daemon Smile ID refused a token it gave: the next one is fresh."""
        body = {"environment": environment, "kind": "token", "status": status}
        return ok_payload(*await self.request("POST", "/v1/report", body))

    async def refresh(self, environment: str | None = None) -> dict[str, Any]:
        body = {"environment": environment} if environment else {}
        return ok_payload(*await self.request("POST", "/v1/refresh", body))

    async def send_signed(
        self,
        environment: str,
        send: Callable[[dict[str, Any]], Awaitable[T]],
        *,
        rejected: Callable[[T], bool] = is_unauthorized,
    ) -> T:
        """Sign, ``await send(signed)``; if Smile ID rejected it, report, sign again, retry once."""
        signed = await self.sign(environment)
        result = await send(signed)
        if not rejected(result):
            return result
        status = status_of(result)
        await self.report(
            environment, signed["key_version"], status if status is not None else "rejected"
        )
        return await send(await self.sign(environment))

    async def close(self) -> None:
        async with self._lock:
            await self._disconnect()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def request(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> tuple[int, dict[str, Any]]:
        message = encode_request(method, path, body)
        async with self._lock:
            for attempt in (1, 2):
                fresh = self._writer is None
                try:
                    return await asyncio.wait_for(self._exchange(message), self.timeout)
                except (_Dropped, OSError, TimeoutError) as exc:
                    await self._disconnect()
                    if fresh or attempt == 2 or isinstance(exc, TimeoutError):
                        raise DaemonUnavailableError(
                            f"sidkeyd at {self.socket_path} {_reason(exc)}"
                        ) from exc
                except DaemonUnavailableError:
                    await self._disconnect()
                    raise
                except (ValueError, IndexError, asyncio.LimitOverrunError):
                    # Not the daemon's HTTP/JSON: the connection is no good, and the error
                    # (a JSONDecodeError keeps the whole answer, a token) is not passed on.
                    await self._disconnect()
                    raise DaemonUnavailableError(
                        f"sidkeyd at {self.socket_path} answered something that is not its protocol"
                    ) from None
        raise AssertionError("unreachable")

    async def _exchange(self, message: bytes) -> tuple[int, dict[str, Any]]:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_unix_connection(self.socket_path)
        assert self._reader is not None
        self._writer.write(message)
        await self._writer.drain()
        try:
            head = await self._reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise DaemonUnavailableError("sidkeyd closed the connection mid-response") from exc
            raise _Dropped() from exc
        status, headers = parse_head(head[:-4])
        length = int(headers.get("content-length", "0"))
        if not 0 <= length <= MAX_BODY_BYTES:
            raise ValueError("answer too large")
        try:
            body = await self._reader.readexactly(length)
        except asyncio.IncompleteReadError as exc:
            raise DaemonUnavailableError("sidkeyd closed the connection mid-response") from exc
        if headers.get("connection", "").lower() == "close":
            await self._disconnect()
        payload = json.loads(body) if body else {}
        if not isinstance(payload, dict):
            raise ValueError("answer is not a JSON object")
        return status, payload

    async def _disconnect(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):  # already broken: nothing more to release
                await writer.wait_closed()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, _Dropped):
        return "closed the connection"
    if isinstance(exc, TimeoutError):
        return "did not answer in time"
    strerror = getattr(exc, "strerror", None)
    return f"cannot be reached: {strerror or exc}"


class AsyncSignature:
    """``Signature`` for asyncio: the same call forms; the api_key is never kept or shown."""

    def __init__(
        self,
        partner_id: str | None = None,
        api_key: str | None = None,
        *,
        environment: str | None = None,
        socket: str | os.PathLike[str] | None = None,
        client: AsyncClient | None = None,
    ) -> None:
        self.environment = resolve_environment(environment, api_key)
        self.partner_id = None if partner_id is None else str(partner_id)
        self._client = client or AsyncClient(socket)
        self._partner_checked = self.partner_id is None

    def __repr__(self) -> str:
        return f"AsyncSignature(environment={self.environment!r}, partner_id={self.partner_id!r})"

    async def sign(self, timestamp: str | None = None) -> dict[str, Any]:
        signed = await self._client.sign(self.environment, timestamp)
        check_partner(self.partner_id, self.environment, signed.get("partner_id"))
        self._partner_checked = True
        return signed

    async def generate_signature(self, timestamp: str | None = None) -> dict[str, str]:
        signed = await self.sign(timestamp)
        return {"signature": signed["signature"], "timestamp": signed["timestamp"]}

    async def confirm_signature(
        self, timestamp: str, msg_signature: str | None = None, *, signature: str | None = None
    ) -> bool:
        given = msg_signature if msg_signature is not None else signature
        if given is None:
            raise TypeError("confirm_signature() needs the signature to check (msg_signature)")
        if not self._partner_checked:
            environments = (await self._client.status())["environments"]
            held = environments.get(self.environment, {}).get("partner_id")
            if held is not None:
                check_partner(self.partner_id, self.environment, held)
                self._partner_checked = True
        return bool((await self._client.verify(self.environment, timestamp, given))["valid"])

    async def close(self) -> None:
        await self._client.close()
