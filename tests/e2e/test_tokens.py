"""Issue 12: sidkeyd brokers Smile ID's V3 token; services never hold the key.

The daemon is a real process; Smile ID is a local fake of the V3 API over HTTPS with its own CA
(``support/fake_smileid_v3.py``), which counts its ``/v3/token`` calls and refuses a wrong or
rotated key (and the tokens minted with it) with 401. Every token any test saw is added to the
session-wide log scan.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from support.daemon import ALL_SECRETS, Daemon, refused
from support.fake_smileid_v3 import FakeV3, fake_v3
from support.schedules import NO_SCHEDULE

StartDaemon = Callable[..., Daemon]
PARTNER_ID = "1622"
KEY = "tokens-e2e-key-one-4b1d-not-real"
NEW_KEY = "tokens-e2e-key-two-93ac-not-real"
CONFIG = """
[server]
socket = "{socket}"
max_connections_per_uid = 200  # the concurrency test opens 100 connections as one uid

[refresh]
@REFRESH@

[log]
format = "json"

[sources.local]
type = "file"
path = "keys.toml"

[environments.sandbox]
source = "local"
secret = "sandbox"
partner_id = "1622"
smileid_url = "@URL@"
smileid_ca_file = "@CA@"
smileid_timeout = "1s"

[environments.production]
source = "local"
secret = "production"
partner_id = "1622"
"""


def keys(key: str) -> str:
    return f'[sandbox]\napi_key = "{key}"\n\n[production]\napi_key = "other-env-key-not-real"\n'


@pytest.fixture
def fake() -> Iterator[FakeV3]:
    with fake_v3(PARTNER_ID, KEY) as fake:
        yield fake
        ALL_SECRETS.update(fake.issued)  # scanned for in every daemon log of the session


def start(start_daemon: StartDaemon, fake: FakeV3, refresh: str = NO_SCHEDULE) -> Daemon:
    config = (
        CONFIG.replace("@URL@", fake.url)
        .replace("@CA@", str(fake.ca_file))
        .replace("@REFRESH@", refresh)
    )
    return start_daemon(config, files={"keys.toml": keys(KEY)})


def test_a_token_is_minted_with_the_key_held_and_cached(
    start_daemon: StartDaemon, fake: FakeV3
) -> None:
    """Two requests: one /v3/token call; the token works at Smile ID; no log line holds it."""
    daemon = start(start_daemon, fake)
    client = daemon.client()
    first, second = client.token("sandbox"), client.token("sandbox")
    assert (1, first["token"], "sandbox") == (
        fake.token_calls,
        second["token"],
        first["environment"],
    )
    assert fake.valid(first["token"])
    issued = daemon.wait_for_event("token.issued", environment="sandbox")
    assert (first["key_version"], first["expires_at"]) == (
        issued["key_version"],
        issued["expires_at"],
    )
    daemon.assert_no_secret_in_logs([KEY, first["token"]])


def test_a_hundred_concurrent_requests_make_one_token_call(
    start_daemon: StartDaemon, fake: FakeV3
) -> None:
    """100 clients at once, each on its own connection: one /v3/token call, one token."""
    daemon = start(start_daemon, fake)
    tokens: list[str] = []
    barrier = threading.Barrier(100)

    def ask() -> None:
        client = daemon.client()
        barrier.wait(30)
        tokens.append(client.token("sandbox")["token"])

    threads = [threading.Thread(target=ask) for _ in range(100)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert (100, 1, 1) == (len(tokens), len(set(tokens)), fake.token_calls)


def test_a_token_is_refreshed_ahead_of_expiry_without_a_client_waiting(
    start_daemon: StartDaemon, fake: FakeV3
) -> None:
    """A 9-second token is replaced at two thirds of its life; the next request makes no call."""
    fake.ttl_s = 9
    daemon = start(start_daemon, fake)
    first = daemon.client().token("sandbox")["token"]
    daemon.wait_for_event("token.refreshed", trigger="ahead")
    calls = fake.token_calls
    second = daemon.client().token("sandbox")["token"]
    assert (2, 2, True) == (calls, fake.token_calls, first != second)


def test_a_rotated_key_drops_the_token_and_the_next_comes_from_the_new_key(
    start_daemon: StartDaemon, fake: FakeV3
) -> None:
    """Rotated in the backend and at Smile ID; SIGHUP: the cached token is gone, the new works."""
    daemon = start(start_daemon, fake)
    old = daemon.client().token("sandbox")
    (daemon.config_path.parent / "keys.toml").write_text(keys(NEW_KEY))
    fake.rotate(NEW_KEY)
    daemon.signal(signal.SIGHUP)
    daemon.wait_for_event("key.rotated", environment="sandbox")
    new = daemon.client().token("sandbox")
    assert (False, True) == (fake.valid(old["token"]), fake.valid(new["token"]))
    assert old["key_version"] != new["key_version"]
    daemon.assert_no_secret_in_logs([KEY, NEW_KEY, old["token"], new["token"]])


def test_a_key_refused_by_smile_id_is_checked_then_the_token_retried(
    start_daemon: StartDaemon, fake: FakeV3
) -> None:
    """Rotated in the backend and at Smile ID only: /v3/token's 401 forces a key check, then OK."""
    daemon = start(start_daemon, fake)
    (daemon.config_path.parent / "keys.toml").write_text(keys(NEW_KEY))
    fake.rotate(NEW_KEY)
    token = daemon.client().token("sandbox")
    rotated = daemon.wait_for_event("key.rotated", environment="sandbox")
    assert (True, "token", 1) == (fake.valid(token["token"]), rotated["trigger"], fake.refused)


def test_a_reported_refusal_forces_a_fresh_token_once_per_interval(
    start_daemon: StartDaemon, fake: FakeV3
) -> None:
    """report kind token: dropped, and the next token is new; a second report is rate-limited."""
    daemon = start(start_daemon, fake)
    client = daemon.client()
    first = client.token("sandbox")["token"]
    answers = [client.report_token("sandbox")["reason"], client.report_token("sandbox")["reason"]]
    second = client.token("sandbox")["token"]
    assert (["dropped", "rate_limited"], True, 2) == (answers, first != second, fake.token_calls)


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("down", (503, "smileid_unreachable")),
        ("hang", (504, "smileid_timeout")),
        ("5xx", (502, "smileid_error")),
        ("malformed", (502, "smileid_bad_response")),
    ],
)
def test_smile_id_failing_gives_a_precise_error_and_signing_goes_on(
    start_daemon: StartDaemon, fake: FakeV3, mode: str, expected: tuple[int, str]
) -> None:
    """Each failure has its status and code; health says the token fails; signing still works."""
    fake.mode = mode
    daemon = start(start_daemon, fake)
    client = daemon.client()
    answer = refused(lambda: client.token("sandbox"))
    fake.released.set()  # a hung request may go now
    healthy, health = client.health()
    signed = [client.sign(name)["environment"] for name in ("sandbox", "production")]
    assert expected == answer
    assert (True, "failing", ["sandbox", "production"]) == (
        healthy,
        health["environments"]["sandbox"]["token"],
        signed,
    )


def test_a_cached_token_is_served_while_smile_id_is_down(
    start_daemon: StartDaemon, fake: FakeV3
) -> None:
    """Smile ID goes away after the first token: the same valid token keeps being served."""
    daemon = start(start_daemon, fake)
    client = daemon.client()
    first = client.token("sandbox")["token"]
    fake.mode = "down"
    assert first == client.token("sandbox")["token"]


def test_a_token_without_exp_is_used_once(start_daemon: StartDaemon, fake: FakeV3) -> None:
    """No decodable exp: each request gets a token of its own."""
    fake.with_exp = False
    daemon = start(start_daemon, fake)
    client = daemon.client()
    tokens = {client.token("sandbox")["token"] for _ in range(3)}
    assert (3, 3) == (len(tokens), fake.token_calls)


def test_an_environment_without_smile_id_v3_says_so(
    start_daemon: StartDaemon, fake: FakeV3
) -> None:
    """production has no smileid/smileid_url: 404 token_not_configured."""
    daemon = start(start_daemon, fake)
    assert (404, "token_not_configured") == refused(lambda: daemon.client().token("production"))


AWS_CONFIG = """
[server]
socket = "{socket}"

[refresh]
interval = "24h"
backoff_min = "24h"
backoff_max = "24h"

[log]
format = "json"

[sources.aws]
type = "aws"
region = "us-east-1"
endpoint_url = "@ENDPOINT@"
max_attempts = 1

[sources.bao]
type = "vault"
url = "@BAO@"
mount = "secret"
kv_version = 2
[sources.bao.auth]
method = "approle"
role_id_file = "role-id"
secret_id_file = "secret-id"

[environments.sandbox]
source = "@SOURCE@"
secret = "@SECRET@"
partner_id = "1622"
smileid_url = "@URL@"
smileid_ca_file = "@CA@"
"""


@pytest.mark.aws
@pytest.mark.vault
@pytest.mark.parametrize("backend", ["aws", "bao"])
def test_a_rotation_in_a_real_backend_drops_the_token(
    start_daemon: StartDaemon, fake: FakeV3, moto_endpoint: Any, openbao: Any, backend: str
) -> None:
    """Secrets Manager (moto) or OpenBao: rotated and SIGHUP; the next token is the new key's."""
    name = moto_endpoint.secret_name("tokens")
    moto_endpoint.client().create_secret(Name=name, SecretString=KEY)
    path = f"smileid/{openbao.unique('tokens')}/sandbox"
    openbao.kv2_put(path, {"api_key": KEY})
    policy = openbao.policy(
        f'path "secret/data/{path}" {{ capabilities = ["read"] }}\n'
        f'path "secret/metadata/{path}" {{ capabilities = ["read"] }}\n'
    )
    _role, role_id, secret_id = openbao.approle([policy])
    config = (
        AWS_CONFIG.replace("@ENDPOINT@", moto_endpoint.url)
        .replace("@BAO@", openbao.url)
        .replace("@SOURCE@", backend)
        .replace("@SECRET@", name if backend == "aws" else path)
        .replace("@URL@", fake.url)
        .replace("@CA@", str(fake.ca_file))
    )
    daemon = start_daemon(config, files={"role-id": role_id, "secret-id": secret_id})
    old = daemon.client().token("sandbox")
    if backend == "aws":
        moto_endpoint.client().put_secret_value(SecretId=name, SecretString=NEW_KEY)
    else:
        openbao.kv2_put(path, {"api_key": NEW_KEY})
    fake.rotate(NEW_KEY)
    daemon.signal(signal.SIGHUP)
    daemon.wait_for_event("key.rotated", environment="sandbox")
    new = daemon.client().token("sandbox")
    assert (False, True, 2) == (
        fake.valid(old["token"]),
        fake.valid(new["token"]),
        fake.token_calls,
    )
    daemon.assert_no_secret_in_logs([KEY, NEW_KEY, role_id, secret_id, old["token"], new["token"]])


def test_only_peers_the_policy_allows_get_a_token(start_daemon: StartDaemon, fake: FakeV3) -> None:
    """[allow] uids = [0]: another uid in the socket's group gets 403, and no call is made."""
    import os

    from test_access import NOGROUP, STRANGER, request_as

    allowed_root_only = 'smileid_timeout = "1s"\n[environments.sandbox.allow]\nuids = [0]\n'
    socket_for_others = 'max_connections_per_uid = 200\nsocket_group = "nogroup"\n'
    config = (
        CONFIG.replace("@URL@", fake.url)
        .replace("@CA@", str(fake.ca_file))
        .replace("@REFRESH@", NO_SCHEDULE)
        .replace('smileid_timeout = "1s"\n', allowed_root_only)
        .replace("max_connections_per_uid = 200", socket_for_others, 1)
    )
    daemon = start_daemon(config, files={"keys.toml": keys(KEY)})
    os.chmod(daemon.socket_path.parent, 0o755)  # let other uids reach the socket's folder
    status, body = request_as(
        daemon, STRANGER, NOGROUP, (), "POST", "/v1/token", {"environment": "sandbox"}
    )
    assert (403, "forbidden", 0) == (status, body["error"]["code"], fake.token_calls)


def test_the_cli_prints_a_token_and_status_shows_its_expiry(
    start_daemon: StartDaemon, fake: FakeV3
) -> None:
    """sidkeyd token --env E prints the token JSON; status shows token_expires_at, no token."""
    import json

    daemon = start(start_daemon, fake)
    printed = daemon.cli("token", "--env", "sandbox")
    token = json.loads(printed.stdout)
    status = daemon.cli("status", "--json")
    sandbox = json.loads(status.stdout)["environments"]["sandbox"]
    assert (0, token["expires_at"], None) == (
        printed.returncode,
        sandbox["token_expires_at"],
        sandbox["token_last_error"],
    )
    assert token["token"] not in status.stdout


def test_a_key_smile_id_refuses_forces_one_backend_check_per_interval(
    start_daemon: StartDaemon, fake: FakeV3
) -> None:
    """Smile ID refuses the key for good: five requests, one forced key check, few calls."""
    fake.rotate("a-key-sidkeyd-does-not-have")
    daemon = start(start_daemon, fake)
    client = daemon.client()
    answers = {refused(lambda: client.token("sandbox")) for _ in range(5)}
    daemon.stop()
    forced = daemon.events("refresh.forced", trigger="token")
    assert ({(502, "smileid_refused_key")}, 1) == (answers, len(forced))
    assert fake.token_calls <= 3  # two for the first request, then the backoff answers


@pytest.mark.parametrize("exp", [float("inf"), float("nan"), 1e20, -5, "soon"])
def test_an_exp_claim_that_is_no_time_makes_a_single_use_token(
    start_daemon: StartDaemon, fake: FakeV3, exp: object
) -> None:
    """Infinity, NaN, far future, negative, a string: no 500, the token is used once."""
    fake.exp_override = exp
    daemon = start(start_daemon, fake)
    answer = daemon.client().token("sandbox")
    assert (None, True) == (answer["expires_at"], answer["token"] in fake.issued)


def test_smile_id_dripping_its_answer_is_cut_at_smileid_timeout(
    start_daemon: StartDaemon, fake: FakeV3
) -> None:
    """A byte every 0.3 s never trips a read timeout; the call's own deadline does: 504."""
    fake.mode = "drip"
    daemon = start(start_daemon, fake)
    answer = refused(lambda: daemon.client().token("sandbox"))
    fake.released.set()
    assert (504, "smileid_timeout") == answer
