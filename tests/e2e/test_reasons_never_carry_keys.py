"""Issue 9.1: no error reason carries key material, whoever asks and wherever it is shown.

Two ways a reason used to carry a key: a backend whose error text holds secret text (a hostile
or buggy endpoint, here a front to moto that answers every Secrets Manager call with a 500 whose
message quotes the held key and a key never held), and a plain config slip (the partner id field
naming the key, or the two fields swapped). Each test collects every answer a peer can get
(health, status, sign and verify refusals, refresh, the CLI) and the daemon's whole log, and
scans them for the keys.
"""

from __future__ import annotations

import json
import signal
import subprocess
import uuid
from collections.abc import Callable, Iterator

import pytest

from support.daemon import Daemon
from support.moto_server import MotoEndpoint, OutageFront

StartDaemon = Callable[..., Daemon]

HELD_KEY = str(uuid.uuid4())  # the shape of Smile ID's keys
NEVER_HELD_KEY = str(uuid.uuid4())
NOT_ADMIN = "[admin]\nuids = [4242]\n"  # the test runs as root, admin by default

AWS_CONFIG = """
[server]
socket = "{socket}"

@ADMIN@

[refresh]
interval = "24h"
backoff_min = "24h"
backoff_max = "24h"

[log]
format = "json"
level = "debug"

[sources.aws]
type = "aws"
region = "us-east-1"
endpoint_url = "@ENDPOINT@"
max_attempts = 1

[environments.sandbox]
source = "aws"
secret = "@LOADED@"

[environments.production]
source = "aws"
secret = "@MISSING@"
"""


def hostile_error() -> dict[str, str]:
    """A 500 whose message quotes the key held, a key never held, and a payload fragment."""
    fragment = json.dumps({"api_key": NEVER_HELD_KEY, "partner_id": "085"})
    return {
        "__type": "InternalServiceError",
        "message": f"cache {HELD_KEY} stale; next value {fragment} (key {NEVER_HELD_KEY})",
    }


def every_answer(daemon: Daemon) -> list[str]:
    """Every body a peer can get about the environments, errors included, and the CLI's text."""
    answers = [
        daemon.raw(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()).decode()
        for path in ("/v1/health", "/v1/status")
    ]
    for path, body in (
        ("/v1/sign", {"environment": "production"}),
        ("/v1/sign", {"environment": "sandbox"}),
        ("/v1/verify", {"environment": "production", "timestamp": "t", "signature": "s"}),
        ("/v1/refresh", {}),
    ):
        data = json.dumps(body).encode()
        request = (
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode() + data
        answers.append(daemon.raw(request).decode())
    for command in (("status",), ("status", "--json"), ("health",)):
        result: subprocess.CompletedProcess[str] = daemon.cli(*command)
        answers.extend((result.stdout, result.stderr))
    return answers


@pytest.fixture
def front(moto_endpoint: MotoEndpoint) -> Iterator[OutageFront]:
    with moto_endpoint.outage_front() as front:
        yield front


@pytest.mark.aws
@pytest.mark.parametrize("admin", ["", NOT_ADMIN], ids=["admin", "not-admin"])
def test_a_hostile_backend_error_reaches_no_answer_and_no_log(
    start_daemon: StartDaemon, moto_endpoint: MotoEndpoint, front: OutageFront, admin: str
) -> None:
    """Secret text in a backend's error body is in no response, CLI output or log line."""
    loaded = moto_endpoint.secret_name("hostile")
    moto_endpoint.client().create_secret(
        Name=loaded, SecretString=json.dumps({"api_key": HELD_KEY, "partner_id": "085"})
    )
    config = (
        AWS_CONFIG.replace("@ADMIN@", admin)
        .replace("@ENDPOINT@", front.url)
        .replace("@LOADED@", loaded)
        .replace("@MISSING@", moto_endpoint.secret_name("hostile-missing"))
    )
    daemon = start_daemon(config)
    daemon.wait_for_event("key.loaded", environment="sandbox")
    front.answer_with = (500, hostile_error())

    daemon.signal(signal.SIGHUP)
    for name in ("sandbox", "production"):
        daemon.wait_for_event("key.refresh_failed", environment=name, trigger="signal")
    answers = every_answer(daemon)
    daemon.stop()

    health = json.loads(answers[0].partition("\r\n\r\n")[2])
    assert "degraded" == health["environments"]["sandbox"]["health"]  # the failure was seen
    assert [] == [a for a in answers if HELD_KEY in a or NEVER_HELD_KEY in a]
    daemon.assert_no_secret_in_logs([HELD_KEY, NEVER_HELD_KEY])


FILE_CONFIG = """
[server]
socket = "{socket}"

[log]
format = "json"

[sources.local]
type = "file"
path = "keys.toml"

[environments.production]
source = "local"
secret = "slip"
partner_id_field = "api_key"

[environments.sandbox]
source = "local"
secret = "swapped"
partner_id = "085"
"""
SLIP_KEY = str(uuid.uuid4())
SWAPPED_KEY = str(uuid.uuid4())
KEYS = f"""
[slip]
api_key = "{SLIP_KEY}"

[swapped]
api_key = "085"
partner_id = "{SWAPPED_KEY}"
"""


def test_a_partner_id_field_that_holds_the_key_is_refused_and_never_shown(
    start_daemon: StartDaemon,
) -> None:
    """partner_id_field naming the key, or the fields swapped: no key, and no key text shown."""
    daemon = start_daemon(FILE_CONFIG, files={"keys.toml": KEYS})
    failures = [
        daemon.wait_for_event("key.refresh_failed", environment=name)
        for name in ("production", "sandbox")
    ]
    answers = every_answer(daemon)
    daemon.stop()

    assert ["partner_id_invalid", "partner_id_invalid"] == [f["error_code"] for f in failures]
    assert [] == [a for a in answers if SLIP_KEY in a or SWAPPED_KEY in a]
    daemon.assert_no_secret_in_logs([SLIP_KEY, SWAPPED_KEY])


PASTED_KEY = str(uuid.uuid4())
PASTED_CONFIG = """
[server]
socket = "{socket}"

[log]
format = "json"

[sources.local]
type = "file"
path = "keys.toml"

[environments.production]
source = "local"
secret = "onlykey"
partner_id = "085"
"""


def test_a_reload_that_pastes_the_key_as_partner_id_is_refused_and_never_shows_it(
    start_daemon: StartDaemon,
) -> None:
    """The key pasted as the config's partner_id (a secret holding only the key needs one
    there): the reload is refused and no answer, log line or CLI text shows it, where it was
    applied and served as every signature's partner id."""
    files = {"keys.toml": f'[onlykey]\napi_key = "{PASTED_KEY}"\n'}
    daemon = start_daemon(PASTED_CONFIG, files=files)
    pasted = PASTED_CONFIG.replace('"085"', f'"{PASTED_KEY}"').replace(
        "{socket}", str(daemon.socket_path)
    )
    daemon.config_path.write_text(pasted)
    reloaded = daemon.raw(
        b"POST /v1/reload HTTP/1.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    ).decode()
    answers = [reloaded, *every_answer(daemon)]
    daemon.stop()

    assert reloaded.startswith("HTTP/1.1 422 ")
    assert [] == [a for a in answers if PASTED_KEY in a]
    daemon.assert_no_secret_in_logs([PASTED_KEY])
