"""The router: a request to its route, refusals to precise error responses and audit lines."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from sidkeyd.app.access import Engine, EnvironmentGate
from sidkeyd.app.admin_routes import AdminRoutes, Reload
from sidkeyd.app.key_routes import SigningRoutes
from sidkeyd.app.token_routes import TokenRoutes
from sidkeyd.audit import AuditTrail
from sidkeyd.config import Config
from sidkeyd.errors import KeyUnavailableError, RequestError
from sidkeyd.http import Request, Response, error_response
from sidkeyd.log import get_logger, untrusted
from sidkeyd.metrics import NO_METRICS, Metrics
from sidkeyd.ratelimit import RateLimiter
from sidkeyd.rejections import RejectionLog
from sidkeyd.signing import TimestampClock
from sidkeyd.tokens import TokenBroker

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
        tokens: TokenBroker | None = None,
        metrics: Metrics = NO_METRICS,
        reload: Reload | None = None,
        audit: AuditTrail | None = None,
    ) -> None:
        self._log = get_logger()
        self.rejections = rejections or RejectionLog(self._log)
        self._engine = engine
        self._clock = clock or TimestampClock()
        self._now = now
        self._tokens = tokens
        self._metrics = metrics
        self._reload = reload
        self._audit = audit
        self._limiter: tuple[tuple[float, int], RateLimiter | None] | None = None
        self._routes = self._routes_for(config)

    def reconfigure(self, config: Config) -> None:
        """A reload's policies and limits, in one swap: a request sees the old routes or the new."""
        self._routes = self._routes_for(config)

    def _routes_for(self, config: Config) -> dict[str, dict[str, Callable[[Request], Result]]]:
        engine, tokens, metrics = self._engine, self._tokens, self._metrics
        gate = EnvironmentGate(engine, {n: env.allow for n, env in config.environments.items()})
        server = config.server
        token_routes = (
            TokenRoutes(tokens, gate, metrics, self._audit) if tokens is not None else None
        )
        signing = SigningRoutes(
            engine,
            gate,
            clock=self._clock,
            now=self._now,
            skew=server.timestamp_skew,
            limiter=self._rate_limiter(server.sign_rate_limit, server.sign_rate_burst),
            token_refused=token_routes.refused if token_routes else None,
            metrics=metrics,
            audit=self._audit,
        )
        admin = AdminRoutes(
            engine,
            gate,
            config.admin,
            tokens,
            metrics=metrics,
            readers=config.metrics.readers,
            reload=self._reload,
            audit=self._audit,
        )
        routes: dict[str, dict[str, Callable[[Request], Result]]] = {
            "/v1/sign": {"POST": signing.sign},
            "/v1/verify": {"POST": signing.verify},
            "/v1/report": {"POST": signing.report},
            "/v1/refresh": {"POST": admin.refresh},
            "/v1/reload": {"POST": admin.reload},
            # HEAD is the GET without its body (the transport leaves the body out).
            "/v1/status": {"GET": admin.status, "HEAD": admin.status},
            "/v1/health": {"GET": admin.health, "HEAD": admin.health},
            "/metrics": {"GET": admin.metrics},
        }
        if token_routes is not None:
            routes["/v1/token"] = {"POST": token_routes.token}
        return routes

    def _rate_limiter(self, rate: float, burst: int) -> RateLimiter | None:
        """The signing limiter; a reload that leaves its settings alone keeps its buckets."""
        if self._limiter is None or self._limiter[0] != (rate, burst):
            limiter = RateLimiter(rate, burst or max(1, int(rate))) if rate > 0 else None
            self._limiter = ((rate, burst), limiter)
        return self._limiter[1]

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
            result = handler(request)
        except (RequestError, KeyUnavailableError) as exc:
            return self._refused(request, exc)
        if isinstance(result, Response):
            return result
        return self._awaited(request, result)

    async def _awaited(self, request: Request, pending: Awaitable[Response]) -> Response:
        """An awaited route's refusals are answered as a synchronous route's are."""
        try:
            return await pending
        except (RequestError, KeyUnavailableError) as exc:
            return self._refused(request, exc)

    def _refused(self, request: Request, exc: RequestError | KeyUnavailableError) -> Response:
        if isinstance(exc, KeyUnavailableError):
            self._log_rejection(request, 503, exc.code)
            return error_response(503, exc.code, exc.message)
        self._log_rejection(request, exc.status, exc.code)
        return error_response(exc.status, exc.code, exc.message, headers=exc.headers)

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
