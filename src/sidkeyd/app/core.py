"""The router: a request to its route, refusals to precise error responses and audit lines."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from sidkeyd.app.access import Engine, EnvironmentGate
from sidkeyd.app.admin_routes import AdminRoutes
from sidkeyd.app.key_routes import SigningRoutes
from sidkeyd.config import Config
from sidkeyd.errors import BadRequest, KeyUnavailableError
from sidkeyd.http import Request, Response, error_response
from sidkeyd.log import get_logger, untrusted
from sidkeyd.ratelimit import RateLimiter
from sidkeyd.rejections import RejectionLog
from sidkeyd.signing import TimestampClock

Result = Response | Awaitable[Response]


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
        self._log = get_logger()
        self.rejections = rejections or RejectionLog(self._log)
        gate = EnvironmentGate(engine, {n: env.allow for n, env in config.environments.items()})
        server = config.server
        limiter = (
            RateLimiter(
                server.sign_rate_limit,
                server.sign_rate_burst or max(1, int(server.sign_rate_limit)),
            )
            if server.sign_rate_limit > 0
            else None
        )
        signing = SigningRoutes(
            engine,
            gate,
            clock=clock or TimestampClock(),
            now=now,
            skew=server.timestamp_skew,
            limiter=limiter,
        )
        admin = AdminRoutes(engine, gate, config.admin)
        self._routes: dict[str, dict[str, Callable[[Request], Result]]] = {
            "/v1/sign": {"POST": signing.sign},
            "/v1/verify": {"POST": signing.verify},
            "/v1/report": {"POST": signing.report},
            "/v1/refresh": {"POST": admin.refresh},
            # HEAD is the GET without its body (the transport leaves the body out).
            "/v1/status": {"GET": admin.status, "HEAD": admin.status},
            "/v1/health": {"GET": admin.health, "HEAD": admin.health},
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
