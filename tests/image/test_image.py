"""The image: non-root, read-only root fs, health, stop, and policy across containers.

A daemon container serves; client containers (other uids, the socket's group, the socket
volume mounted read-only) sign and verify through it, as services beside it would.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from containers import (
    CLIENT_UID,
    DAEMON_UID,
    IMAGE,
    OTHER_UID,
    SOCKET_GID,
    DaemonContainer,
    docker,
    wait_until,
    write_config_dir,
)

REPO = Path(__file__).resolve().parents[2]
GROUP_RULE_GID = 20010  # a supplementary group of the client, named nowhere in the image
KEY = "image-test-key-5d1c8a0f3e9b2746"
KEYS = f'["smileid/sandbox"]\napi_key = "{KEY}"\npartner_id = "085"\n'
CONFIG = f"""
[server]
socket = "/run/sidkeyd/sidkeyd.sock"
socket_group = {SOCKET_GID}
shutdown_timeout = "5s"

[sources.local]
type = "file"
path = "keys.toml"

[environments.sandbox]
source = "local"
secret = "smileid/sandbox"
[environments.sandbox.allow]
users = [{CLIENT_UID}]

[environments.by_group]
source = "local"
secret = "smileid/sandbox"
[environments.by_group.allow]
groups = [{GROUP_RULE_GID}]

[environments.narrowed]
source = "local"
secret = "smileid/sandbox"
[environments.narrowed.allow]
users = [{CLIENT_UID}]
executables = ["/opt/sidkeyd/bin/python3"]
"""
CLIENT = f"{CLIENT_UID}:{CLIENT_UID}"
OTHER = f"{OTHER_UID}:{OTHER_UID}"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonContainer]:
    """One daemon container for the module's read-only checks, removed afterwards."""
    config_dir = write_config_dir(tmp_path_factory.mktemp("etc"), CONFIG, KEYS)
    container = DaemonContainer(IMAGE, config_dir)
    try:
        container.run()
        container.wait_for_event("daemon.started")
        yield container
    finally:
        container.remove()


def test_daemon_runs_as_the_fixed_non_root_uid_and_gid(daemon: DaemonContainer) -> None:
    """pid 1 of the container is uid 10001, gid 10010, as the README documents."""
    status = docker("exec", daemon.name, "cat", "/proc/1/status").stdout
    ids = {line.split(":")[0]: line.split()[1:] for line in status.splitlines()}
    assert (str(DAEMON_UID), str(SOCKET_GID)) == (ids["Uid"][0], ids["Gid"][0])


def test_root_filesystem_is_read_only_while_it_serves(daemon: DaemonContainer) -> None:
    """Started with --read-only and no tmpfs, it serves; nothing can write to /."""
    assert daemon.state()["Running"]
    written = docker("exec", daemon.name, "touch", "/opt/sidkeyd/x", check=False)
    assert 0 != written.returncode
    assert "Read-only file system" in written.stderr


def test_socket_has_the_fixed_group_and_mode(daemon: DaemonContainer) -> None:
    """The socket in the shared volume is group 10010, mode 0660."""
    listed = docker("exec", daemon.name, "stat", "-c", "%g %a", "/run/sidkeyd/sidkeyd.sock")
    assert f"{SOCKET_GID} 660" == listed.stdout.strip()


def test_client_container_in_the_socket_group_signs_and_verifies(
    daemon: DaemonContainer,
) -> None:
    """Another uid, in group 10010, with the volume read-only: sign, then verify that."""
    signed = daemon.client("sign", "--env", "sandbox", user=CLIENT)
    assert 0 == signed.returncode, signed.stderr
    signature = json.loads(signed.stdout)
    verified = daemon.client(
        "verify", "--env", "sandbox", "--timestamp", signature["timestamp"],
        "--signature", signature["signature"], user=CLIENT,
    )  # fmt: skip
    assert 0 == verified.returncode, verified.stderr + verified.stdout


def test_uid_not_in_allow_is_refused_across_containers(daemon: DaemonContainer) -> None:
    """uid 20002 reaches the socket (same group) but is not in [allow]: 403."""
    refused = daemon.client("sign", "--env", "sandbox", user=OTHER)
    assert 1 == refused.returncode
    assert "forbidden" in refused.stderr
    daemon.wait_for_event("request.rejected", reason="forbidden", peer_uid=OTHER_UID)


def test_supplementary_group_rule_holds_across_containers(daemon: DaemonContainer) -> None:
    """groups = [20010]: a client with that extra group signs (SO_PEERGROUPS), one without not."""
    with_group = daemon.client(
        "sign", "--env", "by_group", user=OTHER, groups=(SOCKET_GID, GROUP_RULE_GID)
    )
    without = daemon.client("sign", "--env", "by_group", user=OTHER)
    assert (0, 1) == (with_group.returncode, without.returncode), with_group.stderr


def test_client_outside_the_socket_group_cannot_connect(daemon: DaemonContainer) -> None:
    """Without --group-add 10010 the socket (0660) refuses the connection: exit 3."""
    result = daemon.client("sign", "--env", "sandbox", user=CLIENT, groups=())
    assert 3 == result.returncode
    assert "Permission denied" in result.stderr


def test_audit_line_of_another_container_says_peer_pid_0(daemon: DaemonContainer) -> None:
    """Across PID namespaces the kernel gives pid 0 and there is no executable to read."""
    assert 0 == daemon.client("sign", "--env", "sandbox", user=CLIENT).returncode
    issued = daemon.wait_for_event("signature.issued", peer_uid=CLIENT_UID)
    assert (0, CLIENT_UID, CLIENT_UID, None) == (
        issued["peer_pid"],
        issued["peer_uid"],
        issued["peer_gid"],
        issued["peer_exe"],
    )


def test_executables_rule_refuses_every_other_container(daemon: DaemonContainer) -> None:
    """The allowed uid running the allowed binary is refused (no pid); the start warned."""
    refused = daemon.client("sign", "--env", "narrowed", user=CLIENT)
    assert 1 == refused.returncode
    assert "forbidden" in refused.stderr
    warnings = [e["message"] for e in daemon.events("config.warning")]
    assert any(w.startswith("environments.narrowed.allow: executables") for w in warnings)


def test_health_check_reports_healthy(daemon: DaemonContainer) -> None:
    """The image's HEALTHCHECK (sidkeyd health) turns the container healthy."""
    status = wait_until(
        lambda: s if (s := daemon.state()["Health"]["Status"]) != "starting" else None,
        "the first health check",
    )
    assert "healthy" == status


def test_health_check_reports_unhealthy_without_a_key(tmp_path: Path) -> None:
    """A key file the daemon cannot read: it starts, says why (naming the file), unhealthy."""
    config_dir = write_config_dir(tmp_path / "etc", CONFIG, KEYS)
    os.chown(config_dir / "keys.toml", 0, 0)  # root's, 0400: not the daemon's to read
    container = DaemonContainer(IMAGE, config_dir)
    try:
        container.run()
        failed = container.wait_for_event("key.refresh_failed", environment="sandbox")
        assert "cannot read /etc/sidkeyd/keys.toml: Permission denied" in json.dumps(failed)
        status = wait_until(
            lambda: s if (s := container.state()["Health"]["Status"]) != "starting" else None,
            "the first health check",
        )
        assert "unhealthy" == status
    finally:
        container.remove()


def test_docker_stop_exits_0_well_within_the_stop_timeout(tmp_path: Path) -> None:
    """SIGTERM (the image's STOPSIGNAL): daemon.stopped, exit 0, far sooner than the 30 s kill."""
    container = DaemonContainer(IMAGE, write_config_dir(tmp_path / "etc", CONFIG, KEYS))
    try:
        container.run()
        container.wait_for_event("daemon.started")
        started = time.monotonic()
        docker("stop", "--time", "30", container.name)
        took = time.monotonic() - started
        assert (0, False) == (container.state()["ExitCode"], container.state()["OOMKilled"])
        assert took < 10, f"docker stop took {took:.1f}s"  # a SIGKILL would take 30 s
        container.wait_for_event("daemon.stopped")
    finally:
        container.remove()


def test_unwritable_socket_folder_is_named_and_exits_3(tmp_path: Path) -> None:
    """A bind mount the daemon cannot write: exit 3, the folder, owner and ids named."""
    root_only = tmp_path / "run"
    root_only.mkdir(mode=0o755)
    container = DaemonContainer(IMAGE, write_config_dir(tmp_path / "etc", CONFIG, KEYS))
    try:
        docker(
            "run", "--detach", "--name", container.name, "--read-only",
            "--volume", f"{root_only}:/run/sidkeyd",
            "--volume", f"{container.config_dir}:/etc/sidkeyd:ro", IMAGE,
        )  # fmt: skip
        wait_until(lambda: True if not container.state()["Running"] else None, "the exit")
        assert 3 == container.state()["ExitCode"]
        [failed] = container.events("daemon.failed")
        assert failed["reason"].startswith(
            "cannot write to the socket folder /run/sidkeyd: Permission denied (sidkeyd runs "
            f"as uid {DAEMON_UID}, groups {SOCKET_GID}; /run/sidkeyd has uid 0, gid 0, mode 0755)"
        )
    finally:
        container.remove()


def test_daemonset_init_command_readies_a_root_owned_host_folder(tmp_path: Path) -> None:
    """deploy/kubernetes/daemonset.yaml's init container, as written, lets the daemon serve there.

    The kubelet makes a hostPath folder root's, 0755 (here: a bind mount of such a folder).
    """
    manifest = yaml.safe_load_all((REPO / "deploy/kubernetes/daemonset.yaml").read_text())
    [daemonset] = [doc for doc in manifest if doc["kind"] == "DaemonSet"]
    [init] = daemonset["spec"]["template"]["spec"]["initContainers"]
    caps = init["securityContext"]["capabilities"]["add"]
    host_folder = tmp_path / "run"
    host_folder.mkdir(mode=0o755)
    docker(
        "run", "--rm", "--read-only", "--user", "0:0", "--cap-drop", "ALL",
        *[arg for cap in caps for arg in ("--cap-add", cap)],
        "--volume", f"{host_folder}:/run/sidkeyd", "--entrypoint", init["command"][0],
        IMAGE, *init["command"][1:],
    )  # fmt: skip
    info = host_folder.stat()
    assert (DAEMON_UID, SOCKET_GID, 0o750) == (info.st_uid, info.st_gid, info.st_mode & 0o7777)
    container = DaemonContainer(IMAGE, write_config_dir(tmp_path / "etc", CONFIG, KEYS))
    try:
        docker(
            "run", "--detach", "--name", container.name, "--read-only",
            "--volume", f"{host_folder}:/run/sidkeyd",
            "--volume", f"{container.config_dir}:/etc/sidkeyd:ro", IMAGE,
        )  # fmt: skip
        container.wait_for_event("daemon.started")
        assert (host_folder / "sidkeyd.sock").is_socket()
    finally:
        container.remove()


def test_sidecar_layout_serves_from_a_folder_inside_a_world_writable_one(tmp_path: Path) -> None:
    """sidecar.yaml's emptyDir is 0777: the daemon makes socket/ in it and serves there."""
    empty_dir = tmp_path / "empty-dir"
    empty_dir.mkdir()
    os.chmod(empty_dir, 0o777)
    config = CONFIG.replace("/run/sidkeyd/sidkeyd.sock", "/run/sidkeyd/socket/sidkeyd.sock")
    container = DaemonContainer(IMAGE, write_config_dir(tmp_path / "etc", config, KEYS))
    try:
        docker(
            "run", "--detach", "--name", container.name, "--read-only",
            "--volume", f"{empty_dir}:/run/sidkeyd",
            "--volume", f"{container.config_dir}:/etc/sidkeyd:ro", IMAGE,
        )  # fmt: skip
        container.wait_for_event("daemon.started")
        signed = docker(
            "run", "--rm", "--read-only", "--user", CLIENT, "--group-add", str(SOCKET_GID),
            "--volume", f"{empty_dir}:/run/sidkeyd:ro", IMAGE,
            "sign", "--env", "sandbox", "--socket", "/run/sidkeyd/socket/sidkeyd.sock",
            check=False,
        )  # fmt: skip
        assert 0 == signed.returncode, signed.stderr
    finally:
        container.remove()
