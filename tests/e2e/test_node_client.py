"""The Node client (clients/node) and smile-identity-core 3.2.1 through it, on a real daemon.

Node scripts in tests/node run as real processes against the daemon's real socket and a fake
Smile ID server that checks every signature with the real key; the SDK itself only ever
holds a placeholder key. Each script prints a JSON result that the tests assert on.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support.daemon import ALL_SECRETS, Daemon
from support.node import (
    NODE_CLIENT,
    NODE_TESTS,
    REPO,
    TIMEOUT,
    NodeSdkFake,
    install_test_dependencies,
    last_json,
    node_binary,
    node_env,
    run_node,
)
from support.signatures import expected_signature

KEY = "node-e2e-sandbox-key-3d9f-not-real"
ROTATED_KEY = "node-e2e-rotated-key-71c4-not-real"
PLACEHOLDER_KEY = "held-by-sidkeyd"
PARTNER = "085"
FLOWS = ("id_api", "web_api_upload", "job_status", "web_token", "poll_job_status")

CONFIG = """
[server]
socket = "{socket}"
idle_timeout = "%s"

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
"""


def keys_file(key: str) -> str:
    return f'["smileid/sandbox"]\napi_key = "{key}"\npartner_id = "{PARTNER}"\n'


pytestmark = pytest.mark.skipif(node_binary() is None, reason="node is not installed")


@pytest.fixture(scope="session")
def node_modules() -> Path:
    """tests/node's dependencies (smile-identity-core 3.2.1), installed once per lock file."""
    return install_test_dependencies()


@pytest.fixture
def daemon(start_daemon) -> Iterator[Daemon]:
    ALL_SECRETS.update({KEY, ROTATED_KEY})
    daemon = start_daemon(CONFIG % "60s", files={"keys.toml": keys_file(KEY)})
    yield daemon
    daemon.assert_no_secret_in_logs([KEY, ROTATED_KEY])


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[NodeSdkFake]:
    """HTTPS, since the SDK prefixes every server with https://; the CA goes to Node."""
    with NodeSdkFake(KEY, PARTNER, tls_dir=tmp_path / "tls") as fake:
        yield fake


class NodeRun:
    """Runs tests/node scripts against one daemon (and fake), checking output for keys."""

    def __init__(self, modules: Path, daemon: Daemon, fake: NodeSdkFake | None = None):
        extra = {"SIDKEYD_SOCKET": str(daemon.socket_path), "PARTNER_ID": PARTNER}
        if fake is not None:
            assert fake.ca_file is not None
            extra |= {
                "SMILEID_SERVER": f"127.0.0.1:{fake.port}/v1",
                "NODE_EXTRA_CA_CERTS": str(fake.ca_file),
            }
        self.env = node_env(modules, **extra)

    def __call__(self, script: str, *args: str) -> Any:
        result = run_node(NODE_TESTS / script, args, self.env)
        assert_no_key(result.stdout + result.stderr)
        assert 0 == result.returncode, result.stderr[-2000:]
        return last_json(result.stdout)

    def interactive(self, script: str, *args: str) -> Interactive:
        return Interactive(self.env, script, args)


class Interactive:
    """A script that stops at ``{"waiting": ...}`` until ``go()``; its output is checked too."""

    def __init__(self, env: dict[str, str], script: str, args: tuple[str, ...]):
        node = node_binary()
        assert node is not None
        self.process = subprocess.Popen(
            [node, str(NODE_TESTS / script), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=REPO,
        )

    def wait_until(self, what: str) -> None:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()  # bounded by the pytest timeout
        assert_no_key(line)
        assert {"waiting": what} == json.loads(line), line

    def go(self) -> Any:
        out, err = self.process.communicate("go\n", timeout=TIMEOUT)
        assert_no_key(out + err)
        assert 0 == self.process.returncode, err[-2000:]
        return last_json(out)


def assert_no_key(output: str) -> None:
    for key in (KEY, ROTATED_KEY):
        assert key not in output, "a key appeared in a Node script's output"


@pytest.fixture
def node(node_modules: Path, daemon: Daemon) -> NodeRun:
    return NodeRun(node_modules, daemon)


@pytest.fixture
def node_sdk(node_modules: Path, daemon: Daemon, fake: NodeSdkFake) -> NodeRun:
    return NodeRun(node_modules, daemon, fake)


def signed_by(key: str, signed: dict[str, str]) -> bool:
    return expected_signature(key, signed["timestamp"], PARTNER) == signed["signature"]


# -- the package -----------------------------------------------------------------------


def test_node_client_has_no_runtime_dependencies() -> None:
    """The package declares no dependencies; its files require only node: and its own files.

    (bench.js, not in the package, loads smile-identity-core to measure it.)
    """
    package = json.loads((NODE_CLIENT / "package.json").read_text())
    requires = set()
    for name in (n for n in package["files"] if n.endswith(".js")):
        for line in (NODE_CLIENT / name).read_text().splitlines():
            if 'require("' in line and "resolveFromApp" not in line:
                requires.add(line.split('require("', 1)[1].split('"', 1)[0])
    assert {} == package.get("dependencies", {})
    assert set() == {r for r in requires if not r.startswith(("node:", "./"))}


# -- Client ----------------------------------------------------------------------------


def test_client_signs_now_and_a_given_timestamp(node: NodeRun) -> None:
    """sign() signs the daemon's now; sign(env, ts) signs ts exactly as written."""
    result = node("client_checks.js", "client")
    assert signed_by(KEY, result["now"])
    assert result["now"]["timestamp"].endswith("Z")
    assert result["given"]["timestamp"].endswith("+01:00")
    assert signed_by(KEY, result["given"])


def test_client_verifies_through_the_daemon(node: NodeRun) -> None:
    """verify() is true for the daemon's own signature and false for an altered one."""
    result = node("client_checks.js", "client")
    assert (True, False) == (result["valid"]["valid"], result["invalid"]["valid"])


def test_client_reads_status_and_health(node: NodeRun) -> None:
    """status() lists the environments; health() is ok while every environment can sign."""
    result = node("client_checks.js", "client")
    assert (["sandbox"], True) == (result["environments"], result["health"])


def test_client_refusals_carry_status_and_code(node: NodeRun) -> None:
    """A refused request rejects with RequestFailedError and the daemon's status and code."""
    result = node("client_checks.js", "client")
    expected = {"name": "RequestFailedError", "status": 404, "code": "unknown_environment"}
    assert expected == result["unknown"]
    assert ("RequestFailedError", 400, "invalid_timestamp") == tuple(
        result["bad_timestamp"][k] for k in ("name", "status", "code")
    )


def test_client_without_a_daemon_rejects_as_unavailable(node: NodeRun) -> None:
    """A socket nobody listens on gives DaemonUnavailableError."""
    assert "DaemonUnavailableError" == node("client_checks.js", "unreachable")["error"]["name"]


def test_client_keeps_one_connection_alive(start_daemon, node_modules: Path) -> None:
    """Three requests in a row share one connection, which the daemon closes when idle."""
    daemon = start_daemon(CONFIG % "1s", files={"keys.toml": keys_file(KEY)})
    result = NodeRun(node_modules, daemon)("client_checks.js", "keep_alive")
    daemon.wait_for_event("connection.closed", reason="idle_timeout", peer_pid=result["pid"])
    assert 1 == result["sockets"]
    assert 3 == len(daemon.events("signature.issued", peer_pid=result["pid"]))
    assert 1 == len(daemon.events("connection.closed", peer_pid=result["pid"]))


def test_client_and_integration_let_the_process_exit(node_modules: Path, daemon: Daemon) -> None:
    """Idle keep-alive sockets, the refresh timer and the sync worker keep no process alive.

    The daemon would close the idle connection only after idle_timeout (60s): a process
    held open by it would outlast the 20s bound by far.
    """
    env = NodeRun(node_modules, daemon).env
    result = run_node(NODE_TESTS / "client_checks.js", ["exits_when_idle"], env, timeout=20)
    assert (0, {"signed": True}) == (result.returncode, last_json(result.stdout))


def test_send_signed_reports_a_rejection_and_retries_once(node: NodeRun, daemon: Daemon) -> None:
    """sendSigned: a 401 is reported with the key version used, then one retry, signed anew."""
    result = node("client_checks.js", "send_signed")
    assert 200 == result["status"]
    assert 2 == len(result["sent"])
    reported = daemon.wait_for_event("key.rejection_reported")
    assert result["sent"][0] == reported["key_version"]


# -- smile-identity-core: the signing mechanism ----------------------------------------


def test_presigned_signature_answers_without_the_daemon(node: NodeRun, daemon: Daemon) -> None:
    """With the daemon frozen, generate_signature() still answers from the presigned value.

    That call does no I/O, so the event loop never waits for the daemon; a caller's
    timestamp does need it, and times out.
    """
    script = node.interactive("client_checks.js", "presigned_without_io")
    script.wait_until("daemon stopped")
    assert daemon.process is not None
    daemon.signal(signal.SIGSTOP)
    try:
        result = script.go()
    finally:
        daemon.signal(signal.SIGCONT)
    assert 1 == len({json.dumps(s, sort_keys=True) for s in result["signatures"]})
    assert signed_by(KEY, result["signatures"][0])
    assert (100, 0) == (result["stats"]["presigned"], result["stats"]["blocking"])
    assert "DaemonUnavailableError" == result["with_timestamp"]["name"]


def test_caller_timestamp_is_signed_exactly_as_given(node: NodeRun) -> None:
    """generate_signature(ts) signs ts itself; epoch milliseconds become toISOString()."""
    result = node("client_checks.js", "caller_timestamp")
    assert result["iso"] == result["signed"]["timestamp"]
    assert signed_by(KEY, result["signed"])
    assert result["signed_epoch"]["timestamp"].endswith("Z")
    assert signed_by(KEY, result["signed_epoch"])
    assert 2 == result["stats"]["blocking"]


def test_invalid_timestamp_throws_like_the_sdk(node: NodeRun) -> None:
    """A timestamp that does not parse throws the SDK's own RangeError."""
    assert "RangeError" == node("client_checks.js", "caller_timestamp")["invalid"]["name"]


def test_a_stale_presigned_signature_is_never_served(node: NodeRun) -> None:
    """Past maxAgeMs the presigned value is replaced by a synchronous signature of now."""
    result = node("client_checks.js", "stale_presigned")
    assert (0, 1) == (result["stats"]["presigned"], result["stats"]["blocking"])
    assert result["presigned_timestamp"] != result["signed"]["timestamp"]
    assert signed_by(KEY, result["signed"])


def test_a_partner_id_other_than_the_daemons_throws(node: NodeRun) -> None:
    """The SDK configured with another partner id would send signatures that cannot match."""
    error = node("client_checks.js", "partner_mismatch")["error"]
    assert "the SDK's partner id 999 is not sidkeyd's 085" in error["message"]


def test_confirm_signature_asks_the_daemon(node: NodeRun) -> None:
    """confirm_signature: true for a good signature, false for a wrong or oversized one."""
    result = node("client_checks.js", "confirm")
    assert (True, False, False) == (result["valid"], result["wrong"], result["too_long"])
    assert 3 == result["stats"]["verified"]


def test_uninstall_gives_the_sdk_its_own_signing_back(node: NodeRun) -> None:
    """After uninstall() the SDK signs locally again, with the placeholder key it was given."""
    result = node("client_checks.js", "uninstall")
    timestamp = result["daemon"]["timestamp"]
    expected = expected_signature(PLACEHOLDER_KEY, timestamp, PARTNER)
    assert expected == result["local"]["signature"]
    assert signed_by(KEY, result["daemon"])


# -- smile-identity-core: the SDK's flows against the fake Smile ID -----------------------


def test_sdk_flows_succeed_through_sidkeyd(node_sdk: NodeRun, fake: NodeSdkFake) -> None:
    """IDApi, WebApi upload and polling, Utilities, WebToken, pollJobStatus: all accepted."""
    result = node_sdk("sdk_flows.js")
    assert {flow: [200] for flow in FLOWS} == {
        flow: outcome["statuses"] for flow, outcome in result["rounds"][0].items()
    }
    assert 0 == fake.refused
    assert {"id_verification", "upload", "zip", "job_status", "token"} == set(fake.calls)
    assert result["stats"]["presigned"] >= 4


def test_sdk_flows_are_refused_without_sidkeyd(node_sdk: NodeRun, fake: NodeSdkFake) -> None:
    """The same calls with only the placeholder key: every one is refused with 401."""
    result = node_sdk("sdk_flows.js", "--without-sidkeyd")
    assert {flow: [401] for flow in FLOWS} == {
        flow: outcome["statuses"] for flow, outcome in result["rounds"][0].items()
    }
    assert len(FLOWS) == fake.refused


def test_a_job_status_answer_signed_with_another_key_is_refused(
    node_modules: Path, daemon: Daemon, tmp_path: Path
) -> None:
    """confirm_signature through the daemon: an impostor's job-status answer fails the SDK."""
    with NodeSdkFake(KEY, PARTNER, tls_dir=tmp_path / "tls", response_key=ROTATED_KEY) as fake:
        result = NodeRun(node_modules, daemon, fake)("sdk_flows.js", "--flows=job_status")
    expected = {"ok": False, "statuses": ["Unable to confirm validity of the job_status response"]}
    assert expected == result["rounds"][0]["job_status"]
    assert 1 == result["stats"]["verified"]


def test_rotation_costs_at_most_one_rejected_call_per_flow(
    node_sdk: NodeRun, fake: NodeSdkFake, daemon: Daemon
) -> None:
    """Rotated at Smile ID and in the backend mid-run: each flow loses one call at most.

    The first 401 is reported before the SDK's promise rejects; the daemon checks its
    backend at once, and the retry (or the next flow) signs with the new key.
    """
    script = node_sdk.interactive("sdk_flows.js", "--rotation")
    script.wait_until("rotation")
    fake.rotate(ROTATED_KEY)
    (daemon.config_path.parent / "keys.toml").write_text(keys_file(ROTATED_KEY))
    refused_before = fake.refused
    result = script.go()
    after = result["rounds"][1]
    assert 0 == refused_before
    assert dict.fromkeys(FLOWS, True) == {flow: after[flow]["ok"] for flow in FLOWS}
    assert all(after[flow]["statuses"].count(401) <= 1 for flow in FLOWS), after
    assert fake.refused <= len(FLOWS)
    daemon.wait_for_event("key.rotated", trigger="report")


# -- the example -----------------------------------------------------------------------


def test_node_example_prints_a_valid_signature(node_modules: Path, daemon: Daemon) -> None:
    """clients/examples/node/sign.js prints the daemon's answer, signed with the key held."""
    env = node_env(node_modules, SIDKEYD_SOCKET=str(daemon.socket_path))
    result = run_node(REPO / "clients" / "examples" / "node" / "sign.js", ["sandbox"], env)
    assert_no_key(result.stdout + result.stderr)
    assert 0 == result.returncode, result.stderr
    assert signed_by(KEY, json.loads(result.stdout))


def test_node_example_exits_1_on_a_refusal(node_modules: Path, daemon: Daemon) -> None:
    """The example prints the daemon's error and exits 1 for an unknown environment."""
    env = node_env(node_modules, SIDKEYD_SOCKET=str(daemon.socket_path))
    result = run_node(REPO / "clients" / "examples" / "node" / "sign.js", ["nowhere"], env)
    assert 1 == result.returncode
    assert "unknown_environment" in result.stderr
