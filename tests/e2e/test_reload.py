"""Config reload on a real daemon: ``sidkeyd reload`` and SIGHUP re-read the file it started with.

A valid file is applied while a client signs without an error; an invalid one, or one that
needs a restart, changes nothing and says why; an unchanged environment keeps its key without a
read of its secret; systemd hears RELOADING=1 then READY=1.
"""

from __future__ import annotations

import json
import os
import pwd
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sidkeyd.client import Client
from support.daemon import Daemon, refused, short_socket_dir
from support.moto_server import MotoEndpoint, OutageFront

StartDaemon = Callable[..., Daemon]
NOBODY = pwd.getpwnam("nobody").pw_uid
SANDBOX_KEY = "reload-sandbox-key-5a1e-not-real"
PRODUCTION_KEY = "reload-production-key-77c2-not-real"
STAGING_KEY = "reload-staging-key-0b9d-not-real"
KEYS = {
    "keys.toml": (
        f'[sandbox]\napi_key = "{SANDBOX_KEY}"\n\n[production]\napi_key = "{PRODUCTION_KEY}"\n\n'
        f'[staging]\napi_key = "{STAGING_KEY}"\n'
    )
}
ALL_KEYS = (SANDBOX_KEY, PRODUCTION_KEY, STAGING_KEY)

CONFIG = """
[server]
socket = "{socket}"

[log]
format = "json"
level = "info"

[sources.local]
type = "file"
path = "keys.toml"

[environments.sandbox]
source = "local"
secret = "sandbox"
partner_id = "085"

[environments.production]
source = "local"
secret = "production"
partner_id = "085"
"""
STAGING = '\n[environments.staging]\nsource = "local"\nsecret = "staging"\npartner_id = "085"\n'


def rewrite(daemon: Daemon, text: str) -> None:
    """Replace the daemon's config file (``{socket}`` stands for its socket, as at start)."""
    daemon.config_path.write_text(text.replace("{socket}", str(daemon.socket_path)))


class Signer:
    """Signs ``sandbox`` in a loop on its own connection and keeps every error it sees."""

    def __init__(self, daemon: Daemon) -> None:
        self._client = Client(daemon.socket_path)
        self.signed = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._client.sign("sandbox")
                self.signed += 1
            except Exception as exc:
                self.errors.append(repr(exc))

    def stop(self) -> tuple[int, list[str]]:
        self._stop.set()
        self._thread.join(10)
        self._client.close()
        return self.signed, self.errors


@pytest.fixture
def daemon(start_daemon: StartDaemon) -> Iterator[Daemon]:
    daemon = start_daemon(CONFIG, files=KEYS)
    yield daemon
    daemon.assert_no_secret_in_logs(ALL_KEYS)


def test_a_valid_reload_adds_an_environment_changes_a_policy_and_the_log_level(
    daemon: Daemon,
) -> None:
    """While a client signs: staging added, production closed to root, debug logging; 0 errors."""
    client = daemon.client()
    sandbox_loaded = client.status()["environments"]["sandbox"]["loaded_at"]
    signer = Signer(daemon)
    rewrite(
        daemon,
        CONFIG.replace('level = "info"', 'level = "debug"')
        + STAGING
        + f"\n[environments.production.allow]\nuids = [{NOBODY}]\n",
    )

    reloaded = daemon.cli("reload")
    daemon.wait_for_event("key.loaded", environment="staging")
    daemon.wait_for_event("key.check", environment="sandbox", trigger="reload")  # debug now
    signed, errors = signer.stop()

    assert (0, []) == (reloaded.returncode, errors)
    assert signed > 0
    assert "environments.staging: added" in reloaded.stdout
    assert ["staging"] == daemon.events("config.reloaded")[0]["environments"]["added"]
    assert "staging" == client.sign("staging")["environment"]
    assert (403, "forbidden") == refused(lambda: client.sign("production"))
    assert sandbox_loaded == client.status()["environments"]["sandbox"]["loaded_at"]


def test_an_invalid_file_changes_nothing_and_names_every_problem(daemon: Daemon) -> None:
    """Two problems: reload exits 1 naming both; config.reload_failed lists both; still serving."""
    client = daemon.client()
    rewrite(
        daemon,
        CONFIG.replace("[server]\n", "[server]\nmax_connections = 0\n")
        + STAGING.replace('source = "local"', 'source = "nowhere"'),
    )

    reloaded = daemon.cli("reload")
    failed = daemon.wait_for_event("config.reload_failed")

    assert 1 == reloaded.returncode
    assert "server.max_connections:" in reloaded.stderr
    assert "environments.staging.source:" in reloaded.stderr
    assert ["environments.staging.source", "server.max_connections"] == sorted(
        problem.split(":")[0] for problem in failed["problems"]
    )
    assert (404, "unknown_environment") == refused(lambda: client.sign("staging"))
    assert "sandbox" == client.sign("sandbox")["environment"]
    assert [] == daemon.events("config.reloaded")


def test_a_file_that_removes_every_environment_is_refused_and_keeps_them(daemon: Daemon) -> None:
    """A file cut before its environments (a half-written file, still valid TOML) is
    config_invalid ("environments: at least one..."): both environments still sign."""
    client = daemon.client()
    rewrite(daemon, CONFIG[: CONFIG.index("[environments.sandbox]")])

    reloaded = daemon.cli("reload")

    assert 1 == reloaded.returncode
    assert "environments: at least one environment is required" in reloaded.stderr
    assert ["sandbox", "production"] == [
        client.sign(name)["environment"] for name in ("sandbox", "production")
    ]


def test_a_file_nested_too_deeply_is_refused_as_invalid_not_a_500(daemon: Daemon) -> None:
    """A runaway nested array: reload exits 1 with config_invalid and the daemon logs
    config.reload_failed (it answered 500 and logged a 180 KB traceback)."""
    rewrite(daemon, CONFIG + "\n[x]\na = " + "[" * 5000 + "]" * 5000 + "\n")

    reloaded = daemon.cli("reload")
    failed = daemon.wait_for_event("config.reload_failed")

    assert (1, "config_invalid") == (reloaded.returncode, failed["code"])
    assert "nests values too deeply" in reloaded.stderr
    assert [] == daemon.events("request.failed")


def test_a_socket_change_is_refused_as_needing_a_restart(daemon: Daemon) -> None:
    """server.socket changed (and staging added): refused, named, nothing applied."""
    moved = daemon.socket_path.with_name("moved.sock")
    rewrite(daemon, CONFIG.replace("{socket}", str(moved)) + STAGING)

    reloaded = daemon.cli("reload")

    assert (1, False) == (reloaded.returncode, moved.exists())
    assert "server.socket: needs a restart" in reloaded.stderr
    assert "restart_required" == daemon.wait_for_event("config.reload_failed")["code"]
    assert (404, "unknown_environment") == refused(lambda: daemon.client().sign("staging"))


def test_a_removed_environment_is_unknown_and_gone_from_status(daemon: Daemon) -> None:
    """production removed by SIGHUP: 404 unknown_environment, and status no longer lists it."""
    client = daemon.client()
    rewrite(daemon, CONFIG.split("[environments.production]")[0])

    daemon.signal(signal.SIGHUP)
    reloaded = daemon.wait_for_event("config.reloaded")

    assert ["production"] == reloaded["environments"]["removed"]
    assert (404, "unknown_environment") == refused(lambda: client.sign("production"))
    assert ["sandbox"] == list(client.status()["environments"])


def test_a_changed_secret_is_read_again_and_served(daemon: Daemon) -> None:
    """sandbox now names the staging entry: it is read again and signs with that key."""
    client = daemon.client()
    before = client.status()["environments"]["sandbox"]["key_version"]
    rewrite(daemon, CONFIG.replace('secret = "sandbox"', 'secret = "staging"'))

    assert 0 == daemon.cli("reload").returncode
    daemon.wait_for_event("key.loaded", environment="sandbox", count=2)

    after = client.status()["environments"]["sandbox"]["key_version"]
    assert before != after
    assert after == client.sign("sandbox")["key_version"]


def test_a_non_admin_peer_may_not_reload(daemon: Daemon) -> None:
    """nobody calls POST /v1/reload: 403, and no reload is attempted."""
    from test_access import request_as  # the fork-and-setuid peer of the access tests

    os.chmod(daemon.socket_path.parent, 0o755)
    os.chmod(daemon.socket_path, 0o666)
    rewrite(daemon, CONFIG + STAGING)

    status, answer = request_as(daemon, NOBODY, NOBODY, (), "POST", "/v1/reload", {})

    assert (403, "forbidden") == (status, answer["error"]["code"])
    assert [] == daemon.events("config.reload_started")


def test_a_storm_of_sighups_does_not_break_serving(daemon: Daemon) -> None:
    """Fifty SIGHUPs while a client signs: no error, and the last reload saw the last file."""
    signer = Signer(daemon)
    rewrite(daemon, CONFIG + STAGING)
    for _ in range(50):
        daemon.signal(signal.SIGHUP)
    daemon.wait_for_event("key.loaded", environment="staging")
    assert 0 == daemon.cli("reload").returncode  # one more, after the storm: it has settled
    signed, errors = signer.stop()

    assert ([], True) == (errors, signed > 0)
    assert len(daemon.events("config.reloaded")) <= 51
    assert "staging" == daemon.client().sign("staging")["environment"]


@pytest.mark.parametrize(
    ("replacement", "reason"),
    [
        ("directory", "cannot read {path}: Is a directory"),
        ("dangling", "cannot read {path}: No such file or directory"),
        ("device", "{path} is not a regular file"),
        ("huge", "{path} is larger than 1048576 bytes"),
    ],
)
def test_an_unusable_file_behind_the_config_path_fails_cleanly(
    daemon: Daemon, tmp_path: Path, replacement: str, reason: str
) -> None:
    """The config replaced by a symlink to a folder, nothing, /dev/zero or a 2 GB file."""
    target = {
        "directory": tmp_path,
        "dangling": tmp_path / "absent.toml",
        "device": Path("/dev/zero"),
        "huge": tmp_path / "huge.toml",
    }[replacement]
    if replacement == "huge":
        with target.open("wb") as huge:
            huge.truncate(2 * 1024**3)  # sparse: no disk used
    daemon.config_path.unlink()
    daemon.config_path.symlink_to(target)

    reloaded = daemon.cli("reload")
    failed = daemon.wait_for_event("config.reload_failed")

    assert (1, [f"(file): {reason.format(path=daemon.config_path)}"]) == (
        reloaded.returncode,
        failed["problems"],
    )
    assert "sandbox" == daemon.client().sign("sandbox")["environment"]


def test_reload_answers_and_logs_carry_no_key(daemon: Daemon) -> None:
    """The reload answer and every log line hold none of the three keys."""
    rewrite(daemon, CONFIG + STAGING)
    with Client(daemon.socket_path) as client:
        status, answer = client.request("POST", "/v1/reload", {})
    daemon.wait_for_event("key.loaded", environment="staging")

    assert 200 == status
    assert not any(key in json.dumps(answer) for key in ALL_KEYS)
    daemon.assert_no_secret_in_logs(ALL_KEYS)


def test_a_refused_reload_with_thousands_of_problems_is_answered_within_the_clients_limit(
    daemon: Daemon,
) -> None:
    """80000 unknown keys in a file under 1 MiB: the 422 names the first 100 and counts the
    rest, so `sidkeyd reload` reads it (the whole list, about 4 MiB, passed the client's
    1 MiB and was 'not its protocol'); the daemon goes on signing."""
    unknown = "".join(f"k{i} = 1\n" for i in range(80000))
    rewrite(daemon, CONFIG.replace("[log]", unknown + "[log]", 1))
    with Client(daemon.socket_path) as client:
        status, answer = client.request("POST", "/v1/reload", {})
        signed = client.sign("sandbox")
    problems = answer["error"]["problems"]
    assert (422, 101) == (status, len(problems))
    assert "79900 more problem(s): check-config names all" == problems[-1]["reason"]
    assert "085" == signed["partner_id"]


AWS_CONFIG = """
[server]
socket = "{{socket}}"

[refresh]
interval = "1h"

[log]
format = "json"
level = "debug"

[sources.aws]
type = "aws"
region = "us-east-1"
endpoint_url = "{endpoint}"
max_attempts = 1

[sources.local]
type = "file"
path = "keys.toml"

[environments.production]
source = "aws"
secret = "{secret}"
"""


@pytest.fixture
def front(moto_endpoint: MotoEndpoint) -> Iterator[OutageFront]:
    with moto_endpoint.outage_front() as front:
        yield front


@pytest.mark.aws
def test_an_unchanged_environment_keeps_its_key_without_reading_the_secret(
    start_daemon: StartDaemon, moto_endpoint: MotoEndpoint, front: OutageFront
) -> None:
    """staging added by SIGHUP: production is version-checked, its secret not read again;
    an admin refresh afterwards does read it (the count can move)."""
    name = moto_endpoint.secret_name("reload")
    moto_endpoint.client().create_secret(
        Name=name, SecretString=json.dumps({"api_key": PRODUCTION_KEY, "partner_id": "085"})
    )
    daemon = start_daemon(AWS_CONFIG.format(endpoint=front.url, secret=name), files=KEYS)
    reads = front.count("GetSecretValue")
    rewrite(daemon, AWS_CONFIG.format(endpoint=front.url, secret=name) + STAGING)

    daemon.signal(signal.SIGHUP)
    daemon.wait_for_event("key.loaded", environment="staging")
    daemon.wait_for_event("key.check", environment="production", trigger="signal")
    kept_reads = front.count("GetSecretValue")
    daemon.client().refresh("production")

    assert (1, 1, 2) == (reads, kept_reads, front.count("GetSecretValue"))
    assert ["production"] == daemon.events("config.reloaded")[0]["environments"]["kept"]
    daemon.assert_no_secret_in_logs(ALL_KEYS)


def test_systemd_hears_reloading_with_its_monotonic_time_then_ready(
    start_daemon: StartDaemon,
) -> None:
    """RELOADING=1 + MONOTONIC_USEC, then READY=1 + STATUS, for a good and for a refused reload."""
    from test_systemd_notify import Manager  # the datagram stand-in for the service manager

    manager = Manager(short_socket_dir() / "notify.sock")
    try:
        daemon = start_daemon(CONFIG, files=KEYS, env={"NOTIFY_SOCKET": str(manager.path)})
        manager.wait_for("READY=1")
        started = len(manager.messages)
        before_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        rewrite(daemon, CONFIG + STAGING)
        assert 0 == daemon.cli("reload").returncode
        rewrite(daemon, CONFIG + "[server]\n")  # a duplicate table: invalid
        assert 1 == daemon.cli("reload").returncode
        manager.wait_for("READY=1", count=3)
    finally:
        manager.close()

    after = [m.split("\n") for m in manager.messages[started:]]
    assert [["RELOADING=1", "MONOTONIC_USEC"], ["READY=1", "STATUS"]] * 2 == [
        [lines[0], lines[1].split("=")[0]] for lines in after
    ]
    usec = int(after[0][1].split("=")[1])
    assert before_usec <= usec <= time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert after[1][1].startswith("STATUS=sandbox: healthy; production: healthy; staging: ")


def test_concurrent_reloads_run_one_at_a_time(daemon: Daemon) -> None:
    """Four `sidkeyd reload` at once: all succeed, and no reload starts before the last ended."""
    rewrite(daemon, CONFIG + STAGING)
    command = [sys.executable, "-m", "sidkeyd", "reload", "--socket", str(daemon.socket_path)]
    runs = [subprocess.Popen(command, stdout=subprocess.DEVNULL) for _ in range(4)]
    codes = [run.wait(30) for run in runs]
    daemon.wait_for_event("config.reloaded", count=4)

    order = [
        e["event"]
        for e in daemon.events()
        if e.get("event") in ("config.reload_started", "config.reloaded")
    ]
    assert ([0, 0, 0, 0], ["config.reload_started", "config.reloaded"] * 4) == (codes, order)
