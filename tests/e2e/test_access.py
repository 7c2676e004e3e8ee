"""Access control as the kernel sees it: children that switch uid/gid ask the live daemon.

The suite runs as root, so a forked child can become another user before connecting; the
daemon reads that child's SO_PEERCRED, groups and executable and applies the policy.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import resource
import shutil
import signal
import socket
import subprocess
import sys

import pytest
from test_daemon import KEYS, PRODUCTION_KEY, SANDBOX_KEY

from support.daemon import Daemon, parse_responses, read_all

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switching uid needs root")

NOBODY = pwd.getpwnam("nobody").pw_uid
NOGROUP = grp.getgrnam("nogroup").gr_gid
ADM = grp.getgrnam("adm").gr_gid
STRANGER = 54321  # no passwd entry: an arbitrary other uid
PYTHON = os.path.realpath(sys.executable)

CONFIG = """
[server]
socket = "{socket}"
socket_group = "nogroup"
socket_mode = "0660"
sign_rate_limit = 0.5
sign_rate_burst = 3

[log]
format = "json"

[sources.local]
type = "file"
path = "keys.toml"

[environments.sandbox]
source = "local"
secret = "smileid/sandbox"
[environments.sandbox.allow]
users = ["nobody"]
groups = ["adm"]

[environments.production]
source = "local"
secret = "smileid/production"
partner_id = "1622"
[environments.production.allow]
executables = ["{python}"]
"""


@pytest.fixture
def daemon(start_daemon) -> Daemon:
    daemon = start_daemon(CONFIG.replace("{python}", PYTHON), files={"keys.toml": KEYS})
    os.chmod(daemon.socket_path.parent, 0o755)  # let other uids reach the socket's folder
    yield daemon
    daemon.assert_no_secret_in_logs((SANDBOX_KEY, PRODUCTION_KEY))


def request_as(
    daemon: Daemon,
    uid: int,
    gid: int,
    groups: tuple[int, ...],
    method: str,
    path: str,
    body: dict | None = None,
) -> tuple[int, dict]:
    """Fork, drop to uid/gid/groups, send one request, hand the answer back through a pipe."""
    payload = b"" if body is None else json.dumps(body).encode()
    message = (
        f"{method} {path} HTTP/1.1\r\nContent-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
    ).encode() + payload
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 0
        try:
            os.close(read_end)
            os.setgroups(list(groups))
            os.setgid(gid)
            os.setuid(uid)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(10)
                sock.connect(str(daemon.socket_path))
                sock.sendall(message)
                answer = read_all(sock)
            os.write(write_end, answer)
        except BaseException as exc:
            os.write(write_end, f"CHILD-ERROR {exc!r}".encode())
            code = 1
        finally:
            os._exit(code)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    os.close(read_end)
    os.waitpid(pid, 0)
    data = b"".join(chunks)
    assert not data.startswith(b"CHILD-ERROR"), data
    return parse_responses(data)[0]


SIGN_SANDBOX = ("POST", "/v1/sign", {"environment": "sandbox"})


def sign_from_exited_peer(
    daemon: Daemon, uid: int, gid: int, groups: tuple[int, ...]
) -> tuple[int, int]:
    """The connecting child exits before the daemon reads its credentials.

    The daemon is stopped (SIGSTOP) while a child connects, sends a sandbox sign request,
    forks a grandchild that keeps the socket to read the answer, and exits; the child is reaped,
    so /proc/<pid> is gone, and only then does the daemon continue and accept. Returns the
    status and the child's pid.
    """
    body = json.dumps({"environment": "sandbox"}).encode()
    message = (
        f"POST /v1/sign HTTP/1.1\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body
    assert daemon.process is not None
    read_end, write_end = os.pipe()
    os.kill(daemon.process.pid, signal.SIGSTOP)
    try:
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            try:
                os.close(read_end)
                os.setgroups(list(groups))
                os.setgid(gid)
                os.setuid(uid)
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.connect(str(daemon.socket_path))
                sock.sendall(message)
                if os.fork() == 0:  # the grandchild holds the socket and reads the answer
                    sock.settimeout(10)
                    os.write(write_end, read_all(sock))
            except BaseException as exc:
                os.write(write_end, f"CHILD-ERROR {exc!r}".encode())
            finally:
                os._exit(0)
        os.close(write_end)
        os.waitpid(pid, 0)
        assert not os.path.exists(f"/proc/{pid}")
    finally:
        os.kill(daemon.process.pid, signal.SIGCONT)
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    os.close(read_end)
    data = b"".join(chunks)
    assert not data.startswith(b"CHILD-ERROR"), data
    return parse_responses(data)[0][0], pid


def test_allowed_user_signs(daemon: Daemon) -> None:
    """nobody is listed in users: its signature request succeeds."""
    status, body = request_as(daemon, NOBODY, NOGROUP, (), *SIGN_SANDBOX)
    assert (200, "sandbox") == (status, body["environment"])
    event = daemon.wait_for_event("signature.issued", peer_uid=NOBODY)
    assert NOGROUP == event["peer_gid"]


def test_other_uid_is_forbidden_and_audited(daemon: Daemon) -> None:
    """Another uid that can open the socket gets 403 forbidden; request.rejected names it."""
    status, body = request_as(daemon, STRANGER, NOGROUP, (), *SIGN_SANDBOX)
    assert (403, "forbidden") == (status, body["error"]["code"])
    event = daemon.wait_for_event("request.rejected", peer_uid=STRANGER)
    assert ("forbidden", PYTHON) == (event["reason"], event["peer_exe"])


def test_supplementary_group_is_allowed(daemon: Daemon) -> None:
    """A uid not listed but in the listed group adm (supplementary) signs."""
    status, _ = request_as(daemon, STRANGER, NOGROUP, (ADM,), *SIGN_SANDBOX)
    assert 200 == status


def test_supplementary_group_counts_even_when_the_peer_exited_before_accept(
    daemon: Daemon,
) -> None:
    """adm comes from SO_PEERGROUPS, which outlives the client: /proc no longer has it."""
    status, pid = sign_from_exited_peer(daemon, STRANGER, NOGROUP, (ADM,))
    assert 200 == status
    event = daemon.wait_for_event("signature.issued", peer_pid=pid)
    assert (STRANGER, None) == (event["peer_uid"], event["peer_exe"])


def test_executable_policy_allows_python_and_refuses_curl(daemon: Daemon) -> None:
    """production allows only the Python binary: the Python child signs, curl does not."""
    status, _ = request_as(
        daemon, STRANGER, NOGROUP, (), "POST", "/v1/sign", {"environment": "production"}
    )
    assert 200 == status
    event = daemon.wait_for_event("signature.issued", environment="production")
    assert (PYTHON, False) == (event["peer_exe"], event["peer_exe_verified"])
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    result = subprocess.run(
        [curl, "-s", "--unix-socket", str(daemon.socket_path), "-X", "POST",
         "http://localhost/v1/sign", "-d", '{"environment":"production"}'],
        capture_output=True,
        text=True,
        check=True,
    )  # fmt: skip
    assert "forbidden" == json.loads(result.stdout)["error"]["code"]


def test_verify_and_report_follow_the_same_policy(daemon: Daemon) -> None:
    """A refused peer cannot verify or report either."""
    verify = request_as(
        daemon, STRANGER, NOGROUP, (), "POST", "/v1/verify",
        {"environment": "sandbox", "timestamp": "t", "signature": "s"},
    )  # fmt: skip
    report = request_as(
        daemon, STRANGER, NOGROUP, (), "POST", "/v1/report",
        {"environment": "sandbox", "key_version": "v", "status": 401},
    )  # fmt: skip
    assert [403, 403] == [verify[0], report[0]]


def test_refresh_is_for_admins_only(daemon: Daemon) -> None:
    """nobody may sign sandbox but not force a refresh; root may."""
    status, body = request_as(daemon, NOBODY, NOGROUP, (), "POST", "/v1/refresh", {})
    assert (403, "forbidden") == (status, body["error"]["code"])
    assert daemon.client().refresh()["results"]


def test_non_admins_get_a_reduced_status(daemon: Daemon) -> None:
    """Fingerprints are for admins; others see health and versions."""
    _, reduced = request_as(daemon, NOBODY, NOGROUP, (), "GET", "/v1/status")
    full = daemon.client().status()
    sandbox = reduced["environments"]["sandbox"]
    assert (None, "healthy") == (sandbox["fingerprint"], sandbox["health"])
    assert full["environments"]["sandbox"]["fingerprint"] is not None


def test_peer_without_socket_permission_cannot_connect(daemon: Daemon) -> None:
    """A uid outside the socket's group is stopped by the file mode before any policy."""
    with pytest.raises(AssertionError, match="Permission"):
        request_as(daemon, STRANGER, STRANGER, (), *SIGN_SANDBOX)


def test_signing_rate_limit_per_uid(daemon: Daemon) -> None:
    """Past the burst, a uid gets 429 with Retry-After; another uid is unaffected."""
    client = daemon.client()
    statuses = [
        client.request("POST", "/v1/sign", {"environment": "production"})[0] for _ in range(4)
    ]
    assert [200, 200, 200, 429] == statuses
    body = b'{"environment":"production"}'
    raw = daemon.raw(
        b"POST /v1/sign HTTP/1.1\r\nConnection: close\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    assert b"429 Too Many Requests" in raw
    assert b"\r\nRetry-After: " in raw
    status, _ = request_as(daemon, NOBODY, NOGROUP, (), *SIGN_SANDBOX)
    assert 200 == status


def test_daemon_is_hardened(daemon: Daemon) -> None:
    """No core dumps (RLIMIT_CORE 0) and not dumpable, as logged at start."""
    assert daemon.process is not None
    limits = resource.prlimit(daemon.process.pid, resource.RLIMIT_CORE)
    assert (0, 0) == limits
    event = daemon.wait_for_event("daemon.hardened")
    assert (False, False) == (event["dumpable"], event["core_dumps"])


def test_executables_only_environment_is_warned_about(daemon: Daemon) -> None:
    """production lists only executables, which any socket user can pass: warned at start."""
    warnings = [e["message"] for e in daemon.events("config.warning")]
    # Once; the warning that executables fail across containers (namespaces.py) comes too.
    assert 1 == sum(
        w.startswith("environments.production.allow: only executables") for w in warnings
    )


def test_open_environment_is_warned_about(start_daemon) -> None:
    """An environment without [allow] logs config.warning at startup."""
    open_config = CONFIG.split("[environments.sandbox.allow]")[0] + (
        '\n[environments.production]\nsource = "local"\nsecret = "smileid/production"\n'
        'partner_id = "1622"\n'
    )
    daemon = start_daemon(open_config, files={"keys.toml": KEYS})
    warnings = [e["message"] for e in daemon.events("config.warning")]
    assert 2 == len(warnings)
    assert all("any process that can open the socket" in w for w in warnings)
