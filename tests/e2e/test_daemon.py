"""The daemon as a user runs it: a real process, a real socket, curl-style HTTP, the CLI."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sidkeyd.client import Client, Signature
from sidkeyd.errors import RequestFailedError
from support.daemon import Daemon, parse_responses, read_all
from support.signatures import expected_signature

SANDBOX_KEY = "e2e-sandbox-key-7f3a9c1d-not-real"
PRODUCTION_KEY = "e2e-production-key-b2e4-ünïcødé"
ROTATED_KEY = "e2e-sandbox-rotated-key-55aa-not-real"
ALL_KEYS = (SANDBOX_KEY, PRODUCTION_KEY, ROTATED_KEY)

KEYS = f"""
["smileid/sandbox"]
api_key = "{SANDBOX_KEY}"
partner_id = "085"

["smileid/production"]
api_key = "{PRODUCTION_KEY}"
"""

CONFIG = """
[server]
socket = "{socket}"
timestamp_skew = "5m"

[refresh]
interval = "1h"

[log]
format = "json"
level = "debug"

[sources.local]
type = "file"
path = "keys.toml"

[environments.sandbox]
source = "local"
secret = "smileid/sandbox"

[environments.production]
source = "local"
secret = "smileid/production"
partner_id = "1622"
"""


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@pytest.fixture
def daemon(start_daemon) -> Daemon:
    daemon = start_daemon(CONFIG, files={"keys.toml": KEYS})
    yield daemon
    daemon.assert_no_secret_in_logs(ALL_KEYS)


def post(path: str, body: bytes, extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len(body)}\r\n"
        f"{extra}Connection: close\r\n\r\n"
    ).encode() + body


def test_sign_over_raw_http_matches_an_independent_signature(daemon: Daemon) -> None:
    """The curl request of the README returns a signature made with the sandbox key."""
    status, body = parse_responses(daemon.raw(post("/v1/sign", b'{"environment":"sandbox"}')))[0]
    assert 200 == status
    assert expected_signature(SANDBOX_KEY, body["timestamp"], "085") == body["signature"]
    assert ("085", "sandbox") == (body["partner_id"], body["environment"])
    assert body["key_version"].startswith("scrypt:")


def test_sign_is_audited_with_peer_credentials(daemon: Daemon) -> None:
    """signature.issued names the environment, key version and the calling process."""
    signed = daemon.client().sign("sandbox")
    event = daemon.wait_for_event("signature.issued", environment="sandbox")
    assert (signed["key_version"], os.getpid(), os.getuid()) == (
        event["key_version"],
        event["peer_pid"],
        event["peer_uid"],
    )
    assert signed["timestamp"] == event["signed_timestamp"]


def test_python_signature_class_signs_and_confirms(daemon: Daemon) -> None:
    """Signature mirrors smile-id-core: generate_signature and confirm_signature."""
    signer = Signature(environment="production", socket=str(daemon.socket_path))
    generated = signer.generate_signature()
    assert (
        expected_signature(PRODUCTION_KEY, generated["timestamp"], "1622")
        == (generated["signature"])
    )
    assert signer.confirm_signature(generated["timestamp"], generated["signature"])
    assert not signer.confirm_signature(generated["timestamp"], "AAAA" + generated["signature"][4:])


def test_caller_timestamp_is_signed_exactly_as_given(daemon: Daemon) -> None:
    """An offset timestamp comes back unchanged and is what was signed."""
    timestamp = datetime.now(UTC).astimezone().isoformat()
    signed = daemon.client().sign("sandbox", timestamp)
    assert timestamp == signed["timestamp"]
    assert expected_signature(SANDBOX_KEY, timestamp, "085") == signed["signature"]


def test_client_reuses_one_connection_across_threads(daemon: Daemon) -> None:
    """A shared Client serves many threads over one keep-alive connection."""
    from concurrent.futures import ThreadPoolExecutor

    client = daemon.client()
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: client.sign("sandbox")["signature"], range(64)))
    assert 64 == len(results)
    connections = {e["peer_pid"] for e in daemon.events("signature.issued")}
    assert {os.getpid()} == connections


def test_cli_sign_and_verify(daemon: Daemon) -> None:
    """`sidkeyd sign` prints JSON; `sidkeyd verify` exits 0 for it and 1 for a forgery."""
    timestamp = now_iso()
    signed = daemon.cli("sign", "--env", "sandbox", "--timestamp", timestamp)
    assert 0 == signed.returncode, signed.stderr
    signature = json.loads(signed.stdout)["signature"]
    assert expected_signature(SANDBOX_KEY, timestamp, "085") == signature
    good = daemon.cli(
        "verify", "--env", "sandbox", "--timestamp", timestamp, "--signature", signature
    )
    bad = daemon.cli("verify", "--env", "sandbox", "--timestamp", timestamp, "--signature", "x")
    assert (0, 1) == (good.returncode, bad.returncode)


def test_cli_uses_sidkeyd_socket_variable(daemon: Daemon) -> None:
    """Without --socket, the client commands use $SIDKEYD_SOCKET."""
    result = subprocess.run(
        [sys.executable, "-m", "sidkeyd", "sign", "--env", "sandbox"],
        capture_output=True,
        text=True,
        env={**os.environ, "SIDKEYD_SOCKET": str(daemon.socket_path)},
        check=False,
    )
    assert 0 == result.returncode, result.stderr
    assert "sandbox" == json.loads(result.stdout)["environment"]


def test_status_shows_versions_and_fingerprints_never_keys(daemon: Daemon) -> None:
    """status --json has partner id, version, fingerprint, times and no key material."""
    result = daemon.cli("status", "--json")
    assert 0 == result.returncode
    sandbox = json.loads(result.stdout)["environments"]["sandbox"]
    assert ("healthy", "085", 12) == (
        sandbox["health"],
        sandbox["partner_id"],
        len(sandbox["fingerprint"]),
    )
    assert sandbox["last_success_at"] is not None
    assert sandbox["next_check_at"] is not None
    assert None is sandbox["last_error"]
    human = daemon.cli("status")
    for text in (result.stdout, human.stdout):
        assert all(key not in text for key in ALL_KEYS)
    assert "fingerprint" in human.stdout


def test_health_is_ok_when_every_environment_has_a_key(daemon: Daemon) -> None:
    """GET /v1/health answers 200 and `sidkeyd health` exits 0."""
    assert 0 == daemon.cli("health").returncode
    ok, payload = daemon.client().health()
    assert (True, "ok") == (ok, payload["status"])


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    [
        (post("/v1/sign", b"{not json"), 400, "invalid_json"),
        (post("/v1/sign", b'["sandbox"]'), 400, "invalid_json"),
        (post("/v1/sign", b'{"environment": 1}'), 400, "invalid_request"),
        (post("/v1/sign", b'{"env": "sandbox"}'), 400, "invalid_request"),
        (post("/v1/sign", b'{"environment": "staging"}'), 404, "unknown_environment"),
        (post("/v1/nope", b"{}"), 404, "not_found"),
        (
            b"GET /v1/sign HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            405,
            "method_not_allowed",
        ),
        (b"POST /v1/sign HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 411, "length_required"),
        (post("/v1/sign", b"x" * 70000), 413, "body_too_large"),
        (b"\x00\x01garbage\r\n\r\n", 400, "malformed_request"),
        (
            post("/v1/sign", b'{"environment":"sandbox","timestamp":"2026-11-25 22:04:11Z"}'),
            400,
            "invalid_timestamp",
        ),
        (
            post("/v1/sign", b'{"environment":"sandbox","timestamp":"1764108251"}'),
            400,
            "invalid_timestamp",
        ),
    ],
)
def test_bad_requests_get_precise_errors(
    daemon: Daemon, request_bytes: bytes, status: int, code: str
) -> None:
    """Each malformed request gets its status and error code; the daemon keeps serving."""
    responses = parse_responses(daemon.raw(request_bytes))
    assert (status, code) == (responses[0][0], responses[0][1]["error"]["code"])
    assert "sandbox" == daemon.client().sign("sandbox")["environment"]


def test_garbage_on_one_connection_does_not_disturb_another(daemon: Daemon) -> None:
    """A keep-alive client keeps signing while another connection sends garbage."""
    client = daemon.client()
    client.sign("sandbox")
    assert b"400" in daemon.raw(b"\xff\xfe\xfd" * 1000)
    with daemon.connect() as sock:
        sock.sendall(b"POST /v1/sign HTTP/1.1\r\nContent-Length: 100\r\n\r\n{")
        sock.shutdown(socket.SHUT_WR)  # truncated request
        read_all(sock)
    assert "sandbox" == client.sign("sandbox")["environment"]


def test_pipelined_requests_are_answered_in_order(daemon: Daemon) -> None:
    """Three requests in one write get three responses, in order."""
    body = b'{"environment":"sandbox"}'
    one = f"POST /v1/sign HTTP/1.1\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
    status_request = b"GET /v1/status HTTP/1.1\r\nConnection: close\r\n\r\n"
    responses = parse_responses(daemon.raw(one + one + status_request))
    assert [200, 200, 200] == [status for status, _ in responses]
    assert "environments" in responses[2][1]


def test_key_file_rotation_is_picked_up_on_sighup(daemon: Daemon) -> None:
    """Rewriting the key file and sending SIGHUP rotates; the next signature uses the new key."""
    old = daemon.client().sign("sandbox")["key_version"]
    keys = daemon.config_path.parent / "keys.toml"
    keys.write_text(KEYS.replace(SANDBOX_KEY, ROTATED_KEY))
    daemon.signal(signal.SIGHUP)
    rotated = daemon.wait_for_event("key.rotated", environment="sandbox")
    assert old == rotated["old_version"]
    signed = daemon.client().sign("sandbox")
    assert rotated["new_version"] == signed["key_version"]
    assert expected_signature(ROTATED_KEY, signed["timestamp"], "085") == signed["signature"]


def test_broken_key_file_keeps_the_last_good_key(daemon: Daemon) -> None:
    """A key file that no longer parses is reported; signing goes on with the held key."""
    version = daemon.client().sign("sandbox")["key_version"]
    (daemon.config_path.parent / "keys.toml").write_text('["smileid/sandbox"\napi_key = ')
    daemon.signal(signal.SIGHUP)
    failure = daemon.wait_for_event("key.refresh_failed", environment="sandbox")
    assert ("malformed_payload", version) == (failure["error_code"], failure["serving_version"])
    assert version == daemon.client().sign("sandbox")["key_version"]
    status = daemon.client().status()["environments"]["sandbox"]
    assert ("degraded", "malformed_payload") == (status["health"], status["last_error"]["code"])


def test_sigterm_stops_cleanly_and_removes_the_socket(daemon: Daemon) -> None:
    """SIGTERM: exit 0, daemon.stopping logged, socket file gone."""
    daemon.client().sign("sandbox")
    assert 0 == daemon.stop()
    assert daemon.events("daemon.stopping")
    assert not daemon.socket_path.exists()


def test_socket_is_created_with_the_configured_mode(daemon: Daemon) -> None:
    """The default mode is 0660: owner and group only."""
    assert 0o660 == stat.S_IMODE(daemon.socket_path.stat().st_mode)


def test_a_second_daemon_refuses_a_live_socket(daemon: Daemon, tmp_path: Path) -> None:
    """Another daemon answering on the path: the newcomer exits 3 and the first keeps serving."""
    folder = tmp_path / "second"
    folder.mkdir()
    (folder / "keys.toml").write_text(KEYS)
    second = Daemon.write_config(folder, CONFIG, socket_path=daemon.socket_path)
    second.launch()
    assert second.process is not None
    assert 3 == second.process.wait(30)
    assert "daemon.failed" == second.events()[-1]["event"]
    assert "sandbox" == daemon.client().sign("sandbox")["environment"]


def test_a_stale_socket_file_is_replaced(start_daemon, tmp_path: Path) -> None:
    """A socket file nobody answers on (a crashed daemon's) is removed and rebound."""
    first = start_daemon(CONFIG, files={"keys.toml": KEYS})
    first.signal(signal.SIGKILL)
    assert first.process is not None
    first.process.wait()
    assert first.socket_path.exists()
    folder = tmp_path / "after-crash"
    folder.mkdir()
    (folder / "keys.toml").write_text(KEYS)
    second = Daemon.write_config(folder, CONFIG, socket_path=first.socket_path)
    second.launch()
    try:
        second.wait_for_event("daemon.started")
        assert "sandbox" == Client(second.socket_path).sign("sandbox")["environment"]
    finally:
        second.stop()


def test_a_regular_file_at_the_socket_path_is_never_deleted(start_daemon, tmp_path: Path) -> None:
    """A non-socket file at the path makes the daemon exit 3 and is left alone."""
    folder = tmp_path / "file-in-the-way"
    folder.mkdir()
    (folder / "keys.toml").write_text(KEYS)
    daemon = Daemon.write_config(folder, CONFIG)
    daemon.socket_path.write_text("precious")
    daemon.launch()
    assert daemon.process is not None
    assert 3 == daemon.process.wait(30)
    assert "precious" == daemon.socket_path.read_text()


def test_unknown_environment_through_the_client_raises(daemon: Daemon) -> None:
    """The client turns an error response into RequestFailedError with the code."""
    with pytest.raises(RequestFailedError) as caught:
        daemon.client().sign("staging")
    assert (404, "unknown_environment") == (caught.value.status, caught.value.code)


def test_the_shipped_development_config_serves(tmp_path: Path) -> None:
    """config/sidkeyd.dev.toml with config/dev-keys.toml (what `make run` starts) signs."""
    repo = Path(__file__).resolve().parents[2]
    shutil.copytree(repo / "config", tmp_path / "config")
    daemon = Daemon(
        tmp_path / "config" / "sidkeyd.dev.toml",
        tmp_path / "run" / "sidkeyd.sock",
        tmp_path / "daemon.log",
    )
    daemon.launch()
    try:
        daemon.wait_for_text("daemon.started")
        signed = daemon.client().sign("sandbox")
        assert ("085", "sandbox") == (signed["partner_id"], signed["environment"])
    finally:
        assert 0 == daemon.stop()


def test_status_expect_version_checks_the_key_in_use(daemon: Daemon) -> None:
    """`status --env E --expect-version V` exits 0 for the held version and 1 for another."""
    version = daemon.client().sign("sandbox")["key_version"]
    held = daemon.cli("status", "--env", "sandbox", "--expect-version", version)
    other = daemon.cli("status", "--env", "sandbox", "--expect-version", "sha256:other")
    assert (0, 1) == (held.returncode, other.returncode)
    assert "production" not in held.stdout
    assert "sha256:other" in other.stderr
