"""The daemon with a Transit signer against a real OpenBao dev server: the key never read.

A known key is imported with ``sidkeyd import-key --transit`` (wrapped as Vault's BYOK
procedure says), so every signature the daemon answers can be checked byte for byte against a
local HMAC with that key.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from sidkeyd.client import Client
from sidkeyd.errors import RequestFailedError
from support.daemon import Daemon, refused
from support.openbao_server import CountingProxy, OpenBao
from support.signatures import expected_signature

pytestmark = pytest.mark.vault

# Transit refuses an HMAC key shorter than 32 bytes.
FIRST_KEY = "e2e-transit-key-one-5b2e-0000-not-real"
ROTATED_KEY = "e2e-transit-key-two-9c41-1111-not-real"

CONFIG = """
[server]
socket = "{socket}"

[refresh]
interval = "1h"

[log]
format = "json"
level = "debug"

[sources.bao]
type = "vault"
url = "URL"

[sources.bao.auth]
method = "token"
token_file = "token"

[environments.sandbox]
source = "bao"
signer = "transit"
transit_mount = "MOUNT"
transit_key = "KEY"
partner_id = "085"
presign_lead = "LEAD"
presign_refill_below = "REFILL"
presign_batch = 250
"""


def transit_setup(server: OpenBao) -> tuple[str, str, str]:
    """A fresh Transit mount; returns (mount, key name, a token that may only sign with it)."""
    mount, name = server.unique("transit"), "smileid-sandbox"
    server.admin.sys.enable_secrets_engine("transit", path=mount)
    policy = server.policy(
        f'path "{mount}/keys/{name}" {{ capabilities = ["read"] }}\n'
        f'path "{mount}/hmac/{name}/*" {{ capabilities = ["update"] }}\n'
        f'path "{mount}/verify/{name}/*" {{ capabilities = ["update"] }}\n'
    )
    return mount, name, server.token([policy])


def config_for(url: str, mount: str, name: str, lead: str = "10m", refill: str = "5m") -> str:
    return (
        CONFIG.replace("URL", url)
        .replace("MOUNT", mount)
        .replace('"KEY"', f'"{name}"')
        .replace("LEAD", lead)
        .replace("REFILL", refill)
    )


def import_key(operator: Path, key: str, server: OpenBao) -> subprocess.CompletedProcess[str]:
    """``sidkeyd import-key --transit`` as an operator runs it: the key on stdin, a root token."""
    command = ["import-key", "--transit", "-c", str(operator), "--env", "sandbox"]
    return subprocess.run(
        [sys.executable, "-m", "sidkeyd", *command],
        input=key + "\n",
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "VAULT_TOKEN": server.root_token},
        check=False,
    )


def eventually(probe: Callable[[], bool], what: str, timeout: float = 10) -> None:
    """Poll an observable condition until it holds (a bounded wait, not a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while not probe():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.02)


def caller_timestamp() -> str:
    """A timestamp of now with milliseconds, as a caller sends it: never presigned."""
    return time.strftime("%Y-%m-%dT%H:%M:%S.123Z", time.gmtime())


@dataclass
class TransitDaemon:
    daemon: Daemon
    operator: Path  # the operator's config: token auth from VAULT_TOKEN
    mount: str
    imported: subprocess.CompletedProcess[str]


def start_transit_daemon(
    start_daemon: Callable[..., Daemon],
    server: OpenBao,
    folder: Path,
    key: str,
    *,
    url: str | None = None,
    lead: str = "10m",
    refill: str = "5m",
    extra: str = "",
) -> TransitDaemon:
    """Import ``key`` into a fresh mount, then start a daemon signing with it (table filled).

    ``extra`` is appended to the config (MOUNT and KEY in it replaced as in the sandbox's).
    """
    mount, name, token = transit_setup(server)
    config = config_for(url or server.url, mount, name, lead, refill)
    config += extra.replace("MOUNT", mount).replace('"KEY"', f'"{name}"')
    operator = folder / "operator.toml"
    operator.write_text(
        config.replace('token_file = "token"\n', "").replace("{socket}", str(folder / "none"))
    )
    imported = import_key(operator, key, server)
    assert 0 == imported.returncode, imported.stderr
    daemon = start_daemon(config, files={"token": token})
    daemon.wait_for_event("presign.refilled", environment="sandbox")
    return TransitDaemon(daemon, operator, mount, imported)


def test_an_imported_key_signs_byte_for_byte_with_and_without_a_timestamp(
    openbao: OpenBao, start_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    """Presigned (``.000Z``) and caller-timestamp signatures are the local HMAC of the key."""
    started = start_transit_daemon(start_daemon, openbao, tmp_path, FIRST_KEY)
    client = started.daemon.client()
    presigned = client.sign("sandbox")
    stamp = caller_timestamp()
    live = client.sign("sandbox", stamp)

    output = started.imported.stdout + started.imported.stderr
    assert FIRST_KEY not in output
    assert {"key_version": "1", "created": True, "transit_key": "smileid-sandbox"}.items() <= (
        json.loads(started.imported.stdout).items()
    )
    assert presigned["timestamp"].endswith(".000Z")
    assert ("1", "085") == (presigned["key_version"], presigned["partner_id"])
    assert expected_signature(FIRST_KEY, presigned["timestamp"], "085") == presigned["signature"]
    assert (stamp, expected_signature(FIRST_KEY, stamp, "085")) == (
        live["timestamp"],
        live["signature"],
    )
    assert client.verify("sandbox", presigned["timestamp"], presigned["signature"])["valid"]
    assert client.verify("sandbox", stamp, live["signature"])["valid"]
    assert not client.verify("sandbox", stamp, presigned["signature"])["valid"]
    started.daemon.assert_no_secret_in_logs([FIRST_KEY])


def test_import_version_rotates_and_the_next_signature_uses_it(
    openbao: OpenBao, start_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    """A second import is ``import_version``; after a check, both paths sign with it."""
    started = start_transit_daemon(start_daemon, openbao, tmp_path, FIRST_KEY)
    daemon = started.daemon
    rotated = import_key(started.operator, ROTATED_KEY, openbao)
    daemon.signal(signal.SIGHUP)
    event = daemon.wait_for_event("key.rotated", environment="sandbox")
    daemon.wait_for_event("presign.refilled", environment="sandbox", key_version="2")
    client = daemon.client()
    presigned = client.sign("sandbox")
    stamp = caller_timestamp()
    live = client.sign("sandbox", stamp)

    assert 0 == rotated.returncode, rotated.stderr
    assert '"created": false' in rotated.stdout
    assert ("1", "2") == (event["old_version"], event["new_version"])
    assert ("2", "2") == (presigned["key_version"], live["key_version"])
    assert expected_signature(ROTATED_KEY, presigned["timestamp"], "085") == presigned["signature"]
    assert expected_signature(ROTATED_KEY, stamp, "085") == live["signature"]
    daemon.assert_no_secret_in_logs([FIRST_KEY, ROTATED_KEY])


def hmac_calls(proxy: CountingProxy, mount: str, since: int = 0) -> int:
    """The Transit HMAC calls that reached the server after ``since``."""
    path = f"/v1/{mount}/hmac/smileid-sandbox/sha2-256"
    return sum(1 for method, seen in proxy.seen()[since:] if (method, seen) == ("POST", path))


def test_a_burst_of_default_timestamp_signatures_makes_only_the_batch_calls(
    openbao: OpenBao, start_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    """10k signatures without a timestamp: the startup batches (600 s / 250) and no other call.

    The counter is shown to count: one caller-timestamp signature afterwards is one more call.
    """
    with CountingProxy(openbao.url) as proxy:
        started = start_transit_daemon(start_daemon, openbao, tmp_path, FIRST_KEY, url=proxy.url)
        mount = started.mount
        filled = hmac_calls(proxy, mount)
        mark = proxy.mark()
        client = started.daemon.client()
        signed = [client.sign("sandbox") for _ in range(10_000)]
        during_burst = hmac_calls(proxy, mount, mark)
        client.sign("sandbox", caller_timestamp())
        after_live = hmac_calls(proxy, mount, mark)

    assert math.ceil(600 / 250) == filled
    assert (0, 1) == (during_burst, after_live)
    last = signed[-1]
    assert expected_signature(FIRST_KEY, last["timestamp"], "085") == last["signature"]


def test_with_the_server_stopped_presigned_signatures_carry_on_then_a_precise_503(
    private_openbao: OpenBao, start_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    """Server gone: caller timestamps 503 at once, the table serves until it runs out, then 503.

    Health says how long the table lasts while it does.
    """
    started = start_transit_daemon(
        start_daemon, private_openbao, tmp_path, FIRST_KEY, lead="12s", refill="6s"
    )
    daemon, client = started.daemon, started.daemon.client()
    private_openbao.stop()
    live = refused(lambda: client.sign("sandbox", caller_timestamp()))
    carried_on = client.sign("sandbox")
    _, health = client.health()
    exhausted = wait_until_refused(client)

    assert (503, "signer_unavailable") == live
    assert expected_signature(FIRST_KEY, carried_on["timestamp"], "085") == carried_on["signature"]
    assert 0 < health["environments"]["sandbox"]["presigned_s"] <= 12
    assert (503, "presign_exhausted") == exhausted
    assert daemon.events("presign.refill_failed", environment="sandbox")
    daemon.assert_no_secret_in_logs([FIRST_KEY])


def wait_until_refused(client: Client, timeout: float = 30.0) -> tuple[int, str]:
    """Sign without a timestamp until the daemon refuses (bounded): the table has run out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            client.sign("sandbox")
        except RequestFailedError as exc:
            return exc.status, exc.code
        time.sleep(0.1)
    raise AssertionError(f"still signing after {timeout}s with the server stopped")


def test_import_key_refusals_never_show_the_key(openbao: OpenBao, tmp_path: Path) -> None:
    """A key Transit refuses (too short) exits 1 with Transit's reason; the key is not shown."""
    short_key = "short-key-not-real"
    mount, name, _ = transit_setup(openbao)
    operator = tmp_path / "operator.toml"
    operator.write_text(
        config_for(openbao.url, mount, name)
        .replace('token_file = "token"\n', "")
        .replace("{socket}", str(tmp_path / "none"))
    )
    refused_import = import_key(operator, short_key, openbao)

    assert 1 == refused_import.returncode
    assert "key size" in refused_import.stderr
    assert short_key not in refused_import.stdout + refused_import.stderr


def test_check_config_online_names_the_transit_key_version(
    openbao: OpenBao, tmp_path: Path
) -> None:
    """``check-config --online`` reads the Transit key's version, as the daemon's check does."""
    mount, name, token = transit_setup(openbao)
    operator = tmp_path / "operator.toml"
    operator.write_text(
        config_for(openbao.url, mount, name)
        .replace('token_file = "token"\n', "")
        .replace("{socket}", str(tmp_path / "none"))
    )
    assert 0 == import_key(operator, FIRST_KEY, openbao).returncode
    (tmp_path / "token").write_text(token)
    daemon_config = tmp_path / "daemon.toml"
    daemon_config.write_text(
        config_for(openbao.url, mount, name).replace("{socket}", str(tmp_path / "none"))
    )
    checked = subprocess.run(
        [sys.executable, "-m", "sidkeyd", "check-config", "--online", "-c", str(daemon_config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert (0, "  sandbox: ok, key version 1") == (
        checked.returncode,
        checked.stdout.splitlines()[-1],
    )


# Sandbox (above, through a held proxy) may have 4 live calls out; production signs with the
# same Transit key, straight to the server.
BOUNDED_AND_DIRECT = """live_calls_max = 4

[sources.direct]
type = "vault"
url = "DIRECT"

[sources.direct.auth]
method = "token"
token_file = "token"

[environments.production]
source = "direct"
signer = "transit"
transit_mount = "MOUNT"
transit_key = "KEY"
partner_id = "085"
"""


def test_a_live_flood_on_one_environment_is_refused_promptly_and_spares_the_others(
    openbao: OpenBao, start_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    """Sandbox's Transit held with its 4 live calls out: more caller-timestamp signs and
    bogus verifies there are 503 signer_busy at once, with no call made, while production's
    live sign and sandbox's presigned one are answered; the held calls complete after."""
    with CountingProxy(openbao.url) as proxy:
        extra = BOUNDED_AND_DIRECT.replace("DIRECT", openbao.url)
        started = start_transit_daemon(
            start_daemon, openbao, tmp_path, FIRST_KEY, url=proxy.url, extra=extra
        )
        daemon = started.daemon
        daemon.wait_for_event("presign.refilled", environment="production")
        proxy.hold()
        mark = proxy.mark()
        stamp = caller_timestamp()
        with ThreadPoolExecutor(4) as callers:
            held = [callers.submit(daemon.client().sign, "sandbox", stamp) for _ in range(4)]
            eventually(lambda: 4 == len(proxy.seen()[mark:]), "4 live calls held at the proxy")
            client = daemon.client()
            flood = [refused(lambda: client.sign("sandbox", stamp)) for _ in range(10)]
            flood += [refused(lambda: client.verify("sandbox", stamp, "bogus")) for _ in range(10)]
            body = b'{"environment":"sandbox","timestamp":"' + stamp.encode() + b'"}'
            raw = daemon.raw(
                b"POST /v1/sign HTTP/1.1\r\nConnection: close\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            reached = len(proxy.seen()[mark:])
            other = client.sign("production", stamp)
            presigned = client.sign("sandbox")
            proxy.release()
            answered = [call.result(timeout=30) for call in held]
    rejected = daemon.wait_for_event("request.rejected", reason="signer_busy")

    assert [(503, "signer_busy")] * 20 == flood
    assert 4 == reached  # the refused made no call
    assert expected_signature(FIRST_KEY, stamp, "085") == other["signature"]
    assert expected_signature(FIRST_KEY, presigned["timestamp"], "085") == presigned["signature"]
    assert [expected_signature(FIRST_KEY, stamp, "085")] * 4 == [a["signature"] for a in answered]
    assert b"503 Service Unavailable" in raw
    assert b"\r\nRetry-After: 1\r\n" in raw
    assert "/v1/sign" == rejected["path"]
