"""The routes about the daemon itself: refresh and reload (admins), status (reduced for others),
health."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from sidkeyd.app.access import Engine, EnvironmentGate
from sidkeyd.audit import AuditTrail
from sidkeyd.errors import BadRequest
from sidkeyd.freshness import Health, Trigger
from sidkeyd.http import Request, Response, json_response
from sidkeyd.metrics import CONTENT_TYPE, NO_METRICS, Metrics
from sidkeyd.peer import Peer
from sidkeyd.policy import AccessPolicy
from sidkeyd.reload_plan import ReloadOutcome
from sidkeyd.status import EnvironmentStatus
from sidkeyd.tokens import TokenBroker
from sidkeyd.validation import parse_fields

# Re-read the config file and apply it (``reloading.Reloader.reload``), for the peer asking.
Reload = Callable[[Peer], Awaitable[ReloadOutcome]]


class AdminRoutes:
    def __init__(
        self,
        engine: Engine,
        gate: EnvironmentGate,
        admin: AccessPolicy,
        tokens: TokenBroker | None = None,
        *,
        metrics: Metrics = NO_METRICS,
        readers: AccessPolicy | None = None,
        reload: Reload | None = None,
        audit: AuditTrail | None = None,
    ) -> None:
        self._audit = audit
        self._engine = engine
        self._gate = gate
        self._admin = admin
        self._tokens = tokens
        self._metrics = metrics
        self._readers = readers
        self._reload = reload

    def refresh(self, request: Request) -> Awaitable[Response]:
        if not self._admin.permits(request.peer):
            raise BadRequest("forbidden", "refresh is for admin peers only", status=403)
        body = parse_fields(request.body, required=(), optional=("environment",), allow_empty=True)
        names = (
            [self._gate.environment(body, peer=None)]  # admins may refresh any environment
            if "environment" in body
            else self._engine.environments
        )
        return self._refresh(names, request)

    async def _refresh(self, names: list[str], request: Request) -> Response:
        results, failed = [], []
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
            if outcome.error is not None:
                failed.append(name)
        if self._audit is not None:
            self._audit.refreshed(names, failed, request.peer)
        return json_response(200, {"results": results})

    def reload(self, request: Request) -> Awaitable[Response]:
        """Re-read the config file the daemon started with; 200, or 422/409 naming problems."""
        if not self._admin.permits(request.peer):
            raise BadRequest("forbidden", "reload is for admin peers only", status=403)
        if self._reload is None:
            raise BadRequest("reload_unavailable", "this daemon has no config file to reload", 409)
        parse_fields(request.body, required=(), optional=(), allow_empty=True)
        return self._reloaded(self._reload, request)

    async def _reloaded(self, reload: Reload, request: Request) -> Response:
        outcome = await reload(request.peer)
        status = 200 if outcome.ok else 422 if outcome.code == "config_invalid" else 409
        return json_response(status, outcome.to_json())

    def status(self, request: Request) -> Response:
        detailed = self._admin.permits(request.peer)
        return json_response(200, {"environments": self.environment_status(detailed=detailed)})

    def metrics(self, request: Request) -> Response:
        """Prometheus text, for admins and ``[metrics.readers]``."""
        peer = request.peer
        if not self._admin.permits(peer) and not (self._readers and self._readers.permits(peer)):
            raise BadRequest("forbidden", "metrics are for admins and [metrics.readers]", 403)
        return Response(200, self._metrics.render(), content_type=CONTENT_TYPE)

    def health(self, request: Request) -> Response:
        environments: dict[str, dict[str, Any]] = {}
        usable = True
        for name in self._engine.environments:
            health, reason = self._engine.health(name)
            environments[name] = {"health": health.value, "reason": reason}
            presigned = self._engine.presigned_for_s(name)
            if presigned is not None:  # a remote signer: signatures ready without its backend
                environments[name]["presigned_s"] = int(presigned)
            if self._tokens is not None and name in self._tokens:
                environments[name]["token"] = "failing" if self._tokens.failing(name) else "ok"
            usable = usable and health is not Health.UNAVAILABLE
        audit = None
        if self._audit is not None:  # refusing to answer without records is unusable too
            problem = self._audit.problem()
            audit = {"status": "ok" if problem is None else "failing", "reason": problem}
            usable = usable and (problem is None or not self._audit.refusing)
        body: dict[str, Any] = {"status": "ok" if usable else "unavailable"}
        body["environments"] = environments
        if audit is not None:
            body["audit"] = audit
        return json_response(200 if usable else 503, body)

    def environment_status(self, *, detailed: bool = True) -> dict[str, dict[str, Any]]:
        """Per-environment state; without ``detailed``, no fingerprints and no error reasons."""
        return {
            name: self._status(name).to_json(detailed=detailed)
            for name in self._engine.environments
        }

    def _status(self, name: str) -> EnvironmentStatus:
        status = self._engine.status(name)
        if self._tokens is None or name not in self._tokens:
            return status
        expires_at, error = self._tokens.status(name)
        return replace(status, token_expires_at=expires_at, token_last_error=error)
