"""The request handling core, called directly: Request in, Response out."""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import replace
from datetime import UTC, datetime
from types import MappingProxyType

import pytest

from sidkeyd.app import Application
from sidkeyd.config import Config, EnvironmentConfig, FileSourceConfig
from sidkeyd.http import Request, Response
from sidkeyd.peer import Peer
from sidkeyd.policy import AccessPolicy
from sidkeyd.signing import TimestampClock, compute_signature
from support.engine import make_manager
from support.fakes import FakeSource

NOW = datetime(2026, 11, 25, 22, 4, 11, 123000, tzinfo=UTC)
ME = Peer(pid=os.getpid(), uid=os.getuid(), gid=os.getgid())
STRANGER = Peer(pid=1, uid=4242, gid=4242)


@pytest.fixture
def app():
    source = FakeSource("fake")
    source.put("smileid/sandbox", "key-one", "v1")
    env = EnvironmentConfig(
        name="sandbox", source="fake", secret="smileid/sandbox", partner_id="085"
    )
    config = Config(
        sources=MappingProxyType({"fake": FileSourceConfig(name="fake", path=__file__)}),  # type: ignore[arg-type]
        environments=MappingProxyType({"sandbox": env}),
    )
    manager, _ = make_manager({"fake": source}, env)
    loop = asyncio.new_event_loop()
    loop.run_until_complete(manager.start())
    clock = TimestampClock(lambda: int(NOW.timestamp() * 1000) * 1_000_000)
    yield Application(config, manager, clock=clock, now=lambda: NOW), loop
    loop.run_until_complete(manager.stop())
    loop.close()


def call(app, method: str, path: str, body: object = None, peer: Peer = ME) -> tuple[int, dict]:
    application, loop = app
    raw = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    result = application.handle(Request(method, path, raw, peer))
    if not isinstance(result, Response):
        result = loop.run_until_complete(result)
    return result.status, json.loads(result.body)


def test_sign_without_timestamp_uses_the_clock(app) -> None:
    """The default timestamp is the clock's; the body is valid JSON with every field."""
    status, body = call(app, "POST", "/v1/sign", {"environment": "sandbox"})
    assert 200 == status
    assert {
        "signature": compute_signature("key-one", "2026-11-25T22:04:11.123Z", "085"),
        "timestamp": "2026-11-25T22:04:11.123Z",
        "partner_id": "085",
        "environment": "sandbox",
        "key_version": "v1",
    } == {k: v for k, v in body.items() if k != "key_age_s"}


def test_verify_reports_valid_and_invalid(app) -> None:
    """verify answers valid with the matching version, or invalid."""
    ts = "2026-11-25T22:04:11.123Z"
    good = compute_signature("key-one", ts, "085")
    _, valid = call(
        app, "POST", "/v1/verify", {"environment": "sandbox", "timestamp": ts, "signature": good}
    )
    _, invalid = call(
        app, "POST", "/v1/verify", {"environment": "sandbox", "timestamp": ts, "signature": "x"}
    )
    assert (True, "v1", False, None) == (
        valid["valid"],
        valid["key_version"],
        invalid["valid"],
        invalid["key_version"],
    )


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("POST", "/v1/sign", b"", 400, "invalid_json"),
        (
            "POST",
            "/v1/sign",
            {"environment": "sandbox", "timestamp": "2026-11-25T22:20:00Z"},
            400,
            "invalid_timestamp",
        ),
        ("POST", "/v1/sign", {"environment": "sandbox", "extra": "1"}, 400, "invalid_request"),
        ("POST", "/v1/verify", {"environment": "sandbox"}, 400, "invalid_request"),
        ("POST", "/v1/sign", {"environment": "x" * 5000}, 404, "unknown_environment"),
        ("DELETE", "/v1/status", None, 405, "method_not_allowed"),
        ("GET", "/", None, 404, "not_found"),
        ("POST", "/v1/refresh", b"", 403, "forbidden"),
        (
            "POST",
            "/v1/verify",
            b'{"environment": "sandbox", "timestamp": "\\ud800", "signature": "x"}',
            400,
            "invalid_request",
        ),
    ],
)
def test_errors_have_status_and_code(app, method, path, body, status, code) -> None:
    """Each bad request maps to one status and one stable error code."""
    peer = STRANGER if path == "/v1/refresh" else ME
    assert (status, code) == (lambda r: (r[0], r[1]["error"]["code"]))(
        call(app, method, path, body, peer)
    )


def test_unknown_environment_message_is_truncated(app) -> None:
    """An enormous environment name is not echoed back in full."""
    _, body = call(app, "POST", "/v1/sign", {"environment": "x" * 5000})
    assert len(body["error"]["message"]) < 200


def test_refresh_by_an_admin_reports_each_environment(app) -> None:
    """The daemon's own uid may force a check; the answer lists versions."""
    status, body = call(app, "POST", "/v1/refresh", b"")
    assert (
        200,
        [{"environment": "sandbox", "key_version": "v1", "changed": False, "error": None}],
    ) == (
        status,
        body["results"],
    )


def test_status_and_health(app) -> None:
    """status lists the environment with its fingerprint; health is ok."""
    _, status = call(app, "GET", "/v1/status")
    code, health = call(app, "GET", "/v1/health")
    assert ("healthy", 12) == (
        status["environments"]["sandbox"]["health"],
        len(status["environments"]["sandbox"]["fingerprint"]),
    )
    assert (200, "ok") == (code, health["status"])


@pytest.mark.parametrize("path", ["/v1/status", "/v1/health"])
def test_head_is_answered_like_get(app, path: str) -> None:
    """HEAD on a GET route gets the GET's status and body (the transport drops the body)."""
    assert call(app, "GET", path) == call(app, "HEAD", path)


@pytest.mark.parametrize("path", ["/v1/status", "/v1/health"])
def test_a_405_on_a_get_route_allows_get_and_head(app, path: str) -> None:
    """The Allow header of a wrong method on /v1/status and /v1/health lists GET, HEAD."""
    application, _ = app
    response = application.handle(Request("DELETE", path, b"", ME))
    assert isinstance(response, Response)
    assert (405, (("Allow", "GET, HEAD"),)) == (response.status, response.headers)


def test_a_null_timestamp_signs_now(app) -> None:
    """sign with ``"timestamp": null`` (how Jackson writes an unset field) signs the clock's."""
    status, body = call(app, "POST", "/v1/sign", {"environment": "sandbox", "timestamp": None})
    assert (200, "2026-11-25T22:04:11.123Z") == (status, body["timestamp"])


def test_a_null_environment_in_sign_is_a_precise_400(app) -> None:
    """sign's required environment as null stays a 400 invalid_request."""
    status, body = call(app, "POST", "/v1/sign", {"environment": None})
    assert (400, "invalid_request") == (status, body["error"]["code"])


def test_a_null_environment_in_refresh_refreshes_every_environment(app) -> None:
    """refresh's optional environment as null is a refresh of all of them."""
    status, body = call(app, "POST", "/v1/refresh", {"environment": None})
    assert (200, ["sandbox"]) == (status, [r["environment"] for r in body["results"]])


def test_reload_is_refused_to_a_non_admin_before_anything_is_read(app) -> None:
    """A stranger's POST /v1/reload: 403 forbidden (no reload callable is even needed)."""
    assert (403, "forbidden") == _code(call(app, "POST", "/v1/reload", b"", peer=STRANGER))


def test_reload_without_a_config_file_is_a_precise_409(app) -> None:
    """An Application built without a reload (no config file): 409 reload_unavailable."""
    assert (409, "reload_unavailable") == _code(call(app, "POST", "/v1/reload", b""))


def test_reconfigure_swaps_the_policies_in_one_step(app) -> None:
    """sandbox now allows only uid 4242: the admin peer is refused, the stranger signs."""
    application, _ = app
    env = EnvironmentConfig(
        name="sandbox",
        source="fake",
        secret="smileid/sandbox",
        partner_id="085",
        allow=AccessPolicy(uids=frozenset({4242})),
    )
    application.reconfigure(replace(Config(), environments=MappingProxyType({"sandbox": env})))
    sign = ("POST", "/v1/sign", {"environment": "sandbox"})
    assert (403, 200) == (call(app, *sign)[0], call(app, *sign, peer=STRANGER)[0])


def _code(answer: tuple[int, dict]) -> tuple[int, str]:
    return answer[0], answer[1]["error"]["code"]
