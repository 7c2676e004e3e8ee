"""``POST /v1/token``: a Smile ID V3 token for an environment, for the peers its policy allows."""

from __future__ import annotations

from collections.abc import Awaitable

from sidkeyd.app.access import EnvironmentGate
from sidkeyd.audit import AuditTrail
from sidkeyd.errors import BadRequest
from sidkeyd.http import Request, Response, json_response
from sidkeyd.log import get_logger
from sidkeyd.metrics import NO_METRICS, Metrics
from sidkeyd.tokens import TokenBroker, iso_epoch
from sidkeyd.validation import parse_fields


class TokenRoutes:
    def __init__(
        self,
        broker: TokenBroker,
        gate: EnvironmentGate,
        metrics: Metrics = NO_METRICS,
        audit: AuditTrail | None = None,
    ) -> None:
        self._audit = audit
        self._broker = broker
        self._gate = gate
        self._metrics = metrics
        self._log = get_logger()

    def token(self, request: Request) -> Awaitable[Response]:
        body = parse_fields(request.body, required=("environment",))
        environment = self._gate.environment(body, request.peer)
        if environment not in self._broker:
            raise BadRequest(
                "token_not_configured",
                f"{environment!r} has no Smile ID V3 URL: set smileid or smileid_url",
                status=404,
            )
        return self._token(environment, request)

    def refused(self, environment: str, request: Request) -> Response:
        """``POST /v1/report`` with ``kind: "token"``: Smile ID refused a token we gave."""
        if environment not in self._broker:
            raise BadRequest("token_not_configured", f"{environment!r} has no Smile ID V3 URL")
        reason = self._broker.refused(environment, **request.peer.log_fields())
        return json_response(200, {"environment": environment, "kind": "token", "reason": reason})

    async def _token(self, environment: str, request: Request) -> Response:
        held = await self._broker.token(environment)
        expires_at = iso_epoch(held.expires_at)
        if self._audit is not None:  # the token leaves only after its record
            record = self._audit.token_issued(environment, held.key_version, request.peer)
            if record is not None:
                await self._audit.released(record, None)
        else:
            self._log.info(
                "token.issued",
                environment=environment,
                key_version=held.key_version,
                expires_at=expires_at,
                **request.peer.log_fields(),
            )
        self._metrics.token_issued(environment)
        return json_response(
            200,
            {
                "token": held.token.reveal(),
                "expires_at": expires_at,
                "environment": environment,
                "key_version": held.key_version,
            },
        )
