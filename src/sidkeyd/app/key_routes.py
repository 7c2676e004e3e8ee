"""The routes that use a key: sign, verify, and report a rejection by Smile ID."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from sidkeyd.app.access import Engine, EnvironmentGate
from sidkeyd.audit import AuditTrail
from sidkeyd.errors import BadRequest, TimestampError
from sidkeyd.freshness import Trigger
from sidkeyd.http import Request, Response, json_response
from sidkeyd.keystore import KeySnapshot
from sidkeyd.log import get_logger, untrusted
from sidkeyd.metrics import NO_METRICS, Metrics
from sidkeyd.outlet import Line
from sidkeyd.ratelimit import RateLimiter, retry_after
from sidkeyd.signing import TimestampClock, check_timestamp, whole_second
from sidkeyd.validation import MAX_SIGNATURE_CHARS, MAX_TIMESTAMP_CHARS, parse_fields


class SigningRoutes:
    def __init__(
        self,
        engine: Engine,
        gate: EnvironmentGate,
        *,
        clock: TimestampClock,
        now: Callable[[], datetime],
        skew: timedelta,
        limiter: RateLimiter | None,
        token_refused: Callable[[str, Request], Response] | None = None,
        metrics: Metrics = NO_METRICS,
        audit: AuditTrail | None = None,
    ) -> None:
        self._audit = audit
        self._engine = engine
        self._gate = gate
        self._clock = clock
        self._now = now
        self._skew = skew
        self._limiter = limiter
        self._token_refused = token_refused
        self._metrics = metrics
        self._log = get_logger()

    def sign(self, request: Request) -> Response | Awaitable[Response]:
        started = time.perf_counter_ns()
        body = parse_fields(request.body, required=("environment",), optional=("timestamp",))
        environment = self._gate.environment(body, request.peer)
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
        if timestamp is not None:
            self._check_timestamp(timestamp)
        key = self._engine.signing_key(environment)
        if key.signer is None:
            return self._sign_remote(key, timestamp, request, started)
        if timestamp is None:
            timestamp = self._clock.now()
        signature = key.signer.sign(timestamp, key.partner_id)
        return self._issued(key, timestamp, signature, request, started)

    def _sign_remote(
        self, key: KeySnapshot, timestamp: str | None, request: Request, started: int
    ) -> Response | Awaitable[Response]:
        """From the presigned table when the caller gave no timestamp, else one backend call."""
        assert key.remote is not None
        if timestamp is None:
            presigned = key.remote.presigned()
            if presigned is not None:
                return self._issued(key, *presigned, request, started)
            timestamp = whole_second(int(time.time()))  # not filled yet: sign this second live
        return self._sign_live(key, timestamp, request, started)

    async def _sign_live(
        self, key: KeySnapshot, timestamp: str, request: Request, started: int
    ) -> Response:
        assert key.remote is not None
        signature = await key.remote.sign_live(timestamp)
        answer = self._issued(key, timestamp, signature, request, started)
        return answer if isinstance(answer, Response) else await answer

    def _issued(
        self, key: KeySnapshot, timestamp: str, signature: str, request: Request, started: int
    ) -> Response | Awaitable[Response]:
        environment = key.environment
        age = int(time.time() - key.loaded_epoch)
        record = None
        if self._audit is None:
            self._log.info(
                "signature.issued",
                environment=environment,
                key_version=key.version,
                key_age_s=age,
                signed_timestamp=timestamp,
                **request.peer.log_fields(),
            )
        else:  # the record is written (or waited for) before the signature leaves
            record = self._audit.signature_issued(environment, key.version, timestamp, request.peer)
        # Every value is either validated (timestamp, base64) or pre-encoded JSON.
        payload = (
            f'{{"signature": "{signature}", "timestamp": "{timestamp}", '.encode()
            + key.json_fields
            + f', "key_age_s": {age}}}'.encode()
        )
        if record is not None and self._audit is not None:
            return self._released(record, Response(200, payload), environment, started)
        self._metrics.signed(environment, started)
        return Response(200, payload)

    async def _released(
        self, record: Line, response: Response, environment: str, started: int
    ) -> Response:
        assert self._audit is not None
        released: Response = await self._audit.released(record, response)
        self._metrics.signed(environment, started)
        return released

    def verify(self, request: Request) -> Response | Awaitable[Response]:
        """Whether ``signature`` is Smile ID's HMAC of ``timestamp`` with a key held.

        A signature that matches no key held (a callback signed with a key rotated a moment
        ago) forces one check of the backend, under the report budget, and is answered after it.
        """
        body = parse_fields(request.body, required=("environment", "timestamp", "signature"))
        environment = self._gate.environment(body, request.peer)
        timestamp, signature = body["timestamp"], body["signature"]
        if not timestamp or len(timestamp) > MAX_TIMESTAMP_CHARS:
            raise BadRequest(
                "invalid_timestamp", f"timestamp must be 1 to {MAX_TIMESTAMP_CHARS} characters"
            )
        if len(signature) > MAX_SIGNATURE_CHARS:
            raise BadRequest(
                "invalid_signature", f"signature must be at most {MAX_SIGNATURE_CHARS} characters"
            )
        if self._engine.signing_key(environment).remote is not None:
            return self._verify_remote(environment, timestamp, signature, request)
        matched = self._match(environment, timestamp, signature)
        if matched is None:
            return self._verify_after_check(environment, timestamp, signature, request)
        return self._verified(environment, timestamp, matched, request, rechecked=False)

    async def _verify_remote(
        self, environment: str, timestamp: str, signature: str, request: Request
    ) -> Response:
        """As a local verify, each key's check being the table or one backend call."""
        matched = await self._match_remote(environment, timestamp, signature)
        rechecked = False
        if matched is None:
            rechecked = await self._engine.budgeted_check(
                environment, Trigger.VERIFY, **request.peer.log_fields()
            )
            if rechecked:
                matched = await self._match_remote(environment, timestamp, signature)
        answer = self._verified(environment, timestamp, matched, request, rechecked=rechecked)
        return answer if isinstance(answer, Response) else await answer

    async def _match_remote(
        self, environment: str, timestamp: str, signature: str
    ) -> KeySnapshot | None:
        for key in self._engine.verification_keys(environment):
            if key.remote is not None and await key.remote.verify(timestamp, signature):
                return key
        return None

    async def _verify_after_check(
        self, environment: str, timestamp: str, signature: str, request: Request
    ) -> Response:
        # No key held matched: perhaps a rotation not yet seen here (the report budget).
        rechecked = await self._engine.budgeted_check(
            environment, Trigger.VERIFY, **request.peer.log_fields()
        )
        matched = self._match(environment, timestamp, signature) if rechecked else None
        answer = self._verified(environment, timestamp, matched, request, rechecked=rechecked)
        return answer if isinstance(answer, Response) else await answer

    def _match(self, environment: str, timestamp: str, signature: str) -> KeySnapshot | None:
        for key in self._engine.verification_keys(environment):
            if key.signer is not None and key.signer.verify(timestamp, key.partner_id, signature):
                return key
        return None

    def _verified(
        self,
        environment: str,
        timestamp: str,
        matched: KeySnapshot | None,
        request: Request,
        *,
        rechecked: bool,
    ) -> Response | Awaitable[Response]:
        current = self._engine.signing_key(environment)
        self._metrics.verified(environment, matched is not None)
        answer = json_response(
            200,
            {
                "valid": matched is not None,
                "environment": environment,
                "key_version": matched.version if matched else None,
                "current_key_version": current.version,
            },
        )
        if self._audit is not None:
            version = matched.version if matched else current.version
            valid = matched is not None
            record = self._audit.signature_verified(
                environment, version, valid, timestamp, request.peer, rechecked=rechecked
            )
            return answer if record is None else self._audit.released(record, answer)
        self._log.info(
            "signature.verified",
            environment=environment,
            valid=matched is not None,
            key_version=matched.version if matched else current.version,
            matched_previous=matched is not None and matched is not current,
            rechecked=rechecked,
            signed_timestamp=untrusted(timestamp),
            **request.peer.log_fields(),
        )
        return answer

    def report(self, request: Request) -> Response | Awaitable[Response]:
        """Smile ID refused a signature made with ``key_version`` (or, ``kind: "token"``, a V3
        token from ``/v1/token``): check the backend now, within the report budget."""
        body = parse_fields(
            request.body,
            required=("environment", "status"),
            optional=("key_version", "kind"),
            allow_int=("status",),
        )
        environment = self._gate.environment(body, request.peer)
        kind = body.get("kind", "signature")
        if kind == "token" and self._token_refused is not None:
            return self._token_refused(environment, request)
        if kind != "signature":
            raise BadRequest("invalid_request", "field 'kind' must be 'signature' or 'token'")
        if "key_version" not in body:
            raise BadRequest("invalid_request", "field 'key_version' is required")
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

    def _check_timestamp(self, timestamp: str) -> None:
        if len(timestamp) > MAX_TIMESTAMP_CHARS:
            raise BadRequest("invalid_timestamp", "timestamp is too long")
        try:
            check_timestamp(timestamp, self._now(), self._skew)
        except TimestampError as exc:
            raise BadRequest(exc.code, exc.message) from None
