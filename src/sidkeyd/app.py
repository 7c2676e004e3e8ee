"""The request handling core: ``Request -> Response``, no I/O but the audit log.

Routes (see docs/protocol.md):
    POST /v1/sign     {"environment", "timestamp"?}
    POST /v1/verify   {"environment", "timestamp", "signature"}
    POST /v1/report   {"environment", "key_version", "status"}  Smile ID rejected a signature
    POST /v1/refresh  {"environment"?}                          admin peers only
    GET  /v1/status                                             reduced for non-admins
    GET  /v1/health

Sign, verify and report are allowed only to the peers an environment's ``allow`` lists.

Handlers that wait on a backend return an awaitable; everything else answers synchronously so
that the sign path never creates a task.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from sidkeyd.checks import CheckOutcome
from sidkeyd.config import Config
from sidkeyd.errors import BadRequest, KeyUnavailableError, TimestampError
from sidkeyd.freshness import Health, Trigger
from sidkeyd.http import Request, Response, error_response, json_response
from sidkeyd.keystore import KeySnapshot
from sidkeyd.log import get_logger, untrusted
from sidkeyd.peer import Peer
from sidkeyd.ratelimit import RateLimiter, retry_after
from sidkeyd.rejections import RejectionLog
from sidkeyd.rotation import ReportOutcome
from sidkeyd.signing import TimestampClock, check_timestamp
from sidkeyd.status import EnvironmentStatus
from sidkeyd.validation import (
    MAX_SIGNATURE_CHARS,
    MAX_TIMESTAMP_CHARS,
    parse_fields,
)

Result = Response | Awaitable[Response]


class Engine(Protocol):
    """What the app needs of the rotation engine (``rotation.KeyManager``), and nothing more."""

    @property
    def environments(self) -> list[str]: ...

    def __contains__(self, environment: object) -> bool: ...

    def signing_key(self, environment: str) -> KeySnapshot: ...

    def verification_keys(self, environment: str) -> list[KeySnapshot]: ...

    def health(self, environment: str) -> tuple[Health, str | None]: ...

    def status(self, environment: str) -> EnvironmentStatus: ...

    async def report(
        self, environment: str, key_version: str, status: str, **peer: Any
    ) -> ReportOutcome: ...

    async def check(
        self, environment: str, trigger: Trigger, *, force: bool = False, **fields: Any
    ) -> CheckOutcome: ...


class Application:
    def __init__(
        self,
        config: Config,
        engine: Engine,
        *,
        clock: TimestampClock | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        rejections: RejectionLog | None = None,
    ) -> None:
        self._config = config
        self._engine = engine
        self._clock = clock or TimestampClock()
        self._now = now
        self._skew = config.server.timestamp_skew
        self._admin = config.admin
        self._policies = {name: env.allow for name, env in config.environments.items()}
        server = config.server
        self._limiter = (
            RateLimiter(
                server.sign_rate_limit,
                server.sign_rate_burst or max(1, int(server.sign_rate_limit)),
            )
            if server.sign_rate_limit > 0
            else None
        )
        self._log = get_logger()
        self.rejections = rejections or RejectionLog(self._log)
        self._routes: dict[str, dict[str, Callable[[Request], Result]]] = {
            "/v1/sign": {"POST": self.sign},
            "/v1/verify": {"POST": self.verify},
            "/v1/report": {"POST": self.report},
            "/v1/refresh": {"POST": self.refresh},
            "/v1/status": {"GET": self.status},
            "/v1/health": {"GET": self.health},
        }

    def handle(self, request: Request) -> Result:
        methods = self._routes.get(request.path)
        if methods is None:
            path = untrusted(request.path, 64)
            return self._reject(request, 404, "not_found", f"no such path {path!r}")
        handler = methods.get(request.method)
        if handler is None:
            allow = ", ".join(methods)
            return self._reject(
                request,
                405,
                "method_not_allowed",
                f"{request.path} accepts {allow}",
                headers=(("Allow", allow),),
            )
        try:
            return handler(request)
        except BadRequest as exc:
            self._log_rejection(request, exc.status, exc.code)
            return error_response(exc.status, exc.code, exc.message, headers=exc.headers)
        except KeyUnavailableError as exc:
            self._log_rejection(request, 503, exc.code)
            return error_response(503, exc.code, exc.message)

    # -- handlers ------------------------------------------------------------------------

    def sign(self, request: Request) -> Response:
        body = parse_fields(request.body, required=("environment",), optional=("timestamp",))
        environment = self._environment(body, request.peer)
        if self._limiter is not None:
            wait = self._limiter.acquire(request.peer.uid)
            if wait:
                raise BadRequest(
                    "rate_limited",
                    "too many signatures for this uid; retry later",
                    status=429,
                    headers=(("Retry-After", retry_after(wait)),),
                )
        timestamp = body.get("timestamp")
        if timestamp is None:
            timestamp = self._clock.now()
        else:
            self._check_timestamp(timestamp)
        key = self._engine.signing_key(environment)
        signature = key.signer.sign(timestamp, key.partner_id)
        age = int(time.time() - key.loaded_epoch)
        self._log.info(
            "signature.issued",
            environment=environment,
            key_version=key.version,
            key_age_s=age,
            signed_timestamp=timestamp,
            **request.peer.log_fields(),
        )
        # Every value is either validated (timestamp, base64) or pre-encoded JSON.
        payload = (
            f'{{"signature": "{signature}", "timestamp": "{timestamp}", '.encode()
            + key.json_fields
            + f', "key_age_s": {age}}}'.encode()
        )
        return Response(200, payload)

    def verify(self, request: Request) -> Response:
        body = parse_fields(request.body, required=("environment", "timestamp", "signature"))
        environment = self._environment(body, request.peer)
        timestamp, signature = body["timestamp"], body["signature"]
        if not timestamp or len(timestamp) > MAX_TIMESTAMP_CHARS:
            raise BadRequest(
                "invalid_timestamp", f"timestamp must be 1 to {MAX_TIMESTAMP_CHARS} characters"
            )
        if len(signature) > MAX_SIGNATURE_CHARS:
            raise BadRequest(
                "invalid_signature", f"signature must be at most {MAX_SIGNATURE_CHARS} characters"
            )
        matched = None
        for key in self._engine.verification_keys(environment):
            if key.signer.verify(timestamp, key.partner_id, signature):
                matched = key
                break
        current = self._engine.signing_key(environment)
        self._log.info(
            "signature.verified",
            environment=environment,
            valid=matched is not None,
            key_version=matched.version if matched else current.version,
            matched_previous=matched is not None and matched is not current,
            signed_timestamp=untrusted(timestamp),
            **request.peer.log_fields(),
        )
        return json_response(
            200,
            {
                "valid": matched is not None,
                "environment": environment,
                "key_version": matched.version if matched else None,
                "current_key_version": current.version,
            },
        )

    def report(self, request: Request) -> Result:
        body = parse_fields(
            request.body, required=("environment", "key_version", "status"), allow_int=("status",)
        )
        environment = self._environment(body, request.peer)
        return self._report(environment, body["key_version"], str(body["status"]), request)

    async def _report(
        self, environment: str, key_version: str, status: str, request: Request
    ) -> Response:
        outcome = await self._engine.report(
            environment,
            untrusted(key_version, 128),
            untrusted(status, 16),
            **request.peer.log_fields(),
        )
        return json_response(
            200,
            {
                "environment": environment,
                "key_version": outcome.key_version,
                "checked": outcome.checked,
                "changed": outcome.changed,
                "reason": outcome.reason,
            },
        )

    def refresh(self, request: Request) -> Result:
        if not self._admin.permits(request.peer):
            raise BadRequest("forbidden", "refresh is for admin peers only", status=403)
        body = parse_fields(request.body, required=(), optional=("environment",), allow_empty=True)
        names = (
            [self._environment(body, peer=None)]  # admins may refresh any environment
            if "environment" in body
            else list(self._config.environments)
        )
        return self._refresh(names, request)

    async def _refresh(self, names: list[str], request: Request) -> Response:
        results = []
        for name in names:
            outcome = await self._engine.check(
                name, Trigger.ADMIN, force=True, **request.peer.log_fields()
            )
            results.append(
                {
                    "environment": name,
                    "key_version": outcome.key_version,
                    "changed": outcome.changed,
                    "error": outcome.error,
                }
            )
        return json_response(200, {"results": results})

    def status(self, request: Request) -> Response:
        detailed = self._admin.permits(request.peer)
        return json_response(200, {"environments": self.environment_status(detailed=detailed)})

    def health(self, request: Request) -> Response:
        environments = {}
        usable = True
        for name in self._engine.environments:
            health, reason = self._engine.health(name)
            environments[name] = {"health": health.value, "reason": reason}
            usable = usable and health is not Health.UNAVAILABLE
        status = 200 if usable else 503
        return json_response(
            status, {"status": "ok" if usable else "unavailable", "environments": environments}
        )

    def environment_status(self, *, detailed: bool = True) -> dict[str, dict[str, Any]]:
        """Per-environment state; without ``detailed``, no fingerprints and no error reasons."""
        return {
            name: self._engine.status(name).to_json(detailed=detailed)
            for name in self._engine.environments
        }

    # -- request parsing -----------------------------------------------------------------

    def _environment(self, body: dict[str, str], peer: Peer | None) -> str:
        """The requested environment, if it exists and ``peer`` (unless None) may use it."""
        name = body["environment"]
        if name not in self._engine:
            raise BadRequest(
                "unknown_environment", f"no environment {untrusted(name, 64)!r}", status=404
            )
        policy = self._policies[name]
        if peer is not None and policy is not None and not policy.permits(peer):
            raise BadRequest("forbidden", f"this process may not use {name!r}", status=403)
        return name

    def _check_timestamp(self, timestamp: str) -> None:
        if len(timestamp) > MAX_TIMESTAMP_CHARS:
            raise BadRequest("invalid_timestamp", "timestamp is too long")
        try:
            check_timestamp(timestamp, self._now(), self._skew)
        except TimestampError as exc:
            raise BadRequest(exc.code, exc.message) from None

    def _reject(
        self, request: Request, status: int, code: str, message: str, **kw: Any
    ) -> Response:
        self._log_rejection(request, status, code)
        return error_response(status, code, message, **kw)

    def _log_rejection(self, request: Request, status: int, reason: str) -> None:
        self.rejections.reject(
            status,
            reason,
            method=untrusted(request.method, 16),
            path=untrusted(request.path, 128),
            **request.peer.log_fields(),
        )
