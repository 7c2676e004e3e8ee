"""deploy/kubernetes/ and compose.yaml: valid for Kubernetes, sidkeyd, and the image's ids.

Validated offline against the Kubernetes JSON schemas kubernetes-validate bundles (strict:
an unknown field is an error); each embedded sidkeyd.toml goes through sidkeyd's own loader.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from sidkeyd.config import Config
from sidkeyd.config_loader import parse_config

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = sorted((REPO / "deploy" / "kubernetes").glob("*.yaml"))
# The oldest release with native sidecars (sidecar.yaml), and the newest the package knows.
VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def resource(path: Path, kind: str) -> dict[str, Any]:
    [found] = [doc for doc in documents(path) if doc["kind"] == kind]
    return found


def embedded_config(path: Path) -> Config:
    text = resource(path, "ConfigMap")["data"]["sidkeyd.toml"]
    return parse_config(tomllib.loads(text), base_dir=Path("/etc/sidkeyd"))


def image_ids() -> tuple[int, int]:
    """The daemon's uid and the socket's gid, as the Dockerfile makes them."""
    dockerfile = (REPO / "Dockerfile").read_text()
    uid = re.search(r"useradd --uid (\d+)", dockerfile)
    gid = re.search(r"groupadd --gid (\d+) sidkeyd-clients", dockerfile)
    assert uid is not None
    assert gid is not None
    return int(uid.group(1)), int(gid.group(1))


def pod_spec(path: Path, kind: str) -> dict[str, Any]:
    spec: dict[str, Any] = resource(path, kind)["spec"]["template"]["spec"]
    return spec


def test_there_are_manifests_for_a_daemonset_a_client_a_sidecar_and_vault() -> None:
    """The examples the README points to exist."""
    expected = ["client.yaml", "daemonset.yaml", "sidecar.yaml", "vault-kubernetes-auth.yaml"]
    assert expected == [path.name for path in MANIFESTS]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_is_valid_kubernetes(path: Path, version: str) -> None:
    """Every document validates strictly against that release's schemas."""
    for doc in documents(path):
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_validation_refuses_an_unknown_field() -> None:
    """Strict validation is no rubber stamp: a misspelt securityContext key is refused."""
    daemonset = resource(REPO / "deploy" / "kubernetes" / "daemonset.yaml", "DaemonSet")
    daemonset["spec"]["template"]["spec"]["securityContext"]["runAsUsr"] = 10001
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(daemonset, VERSIONS[0], strict=True)


@pytest.mark.parametrize("name", ["daemonset.yaml", "sidecar.yaml", "vault-kubernetes-auth.yaml"])
def test_embedded_sidkeyd_config_loads(name: str) -> None:
    """Each ConfigMap's sidkeyd.toml passes sidkeyd's loader, with the image's socket group."""
    config = embedded_config(REPO / "deploy" / "kubernetes" / name)
    assert image_ids()[1] == config.server.socket_group


def test_daemonset_runs_as_the_image_ids_read_only_with_limits_and_probes() -> None:
    """uid 10001, gid 10010, no privilege, read-only root, a memory limit, three probes."""
    spec = pod_spec(REPO / "deploy" / "kubernetes" / "daemonset.yaml", "DaemonSet")
    [daemon] = spec["containers"]
    assert image_ids() == (
        spec["securityContext"]["runAsUser"],
        spec["securityContext"]["runAsGroup"],
    )
    assert (True, False, ["ALL"]) == (
        daemon["securityContext"]["readOnlyRootFilesystem"],
        daemon["securityContext"]["allowPrivilegeEscalation"],
        daemon["securityContext"]["capabilities"]["drop"],
    )
    assert "memory" in daemon["resources"]["limits"]
    assert {
        "startupProbe": ["sidkeyd", "status"],
        "readinessProbe": ["sidkeyd", "health"],
        "livenessProbe": ["sidkeyd", "status"],
    } == {
        probe: daemon[probe]["exec"]["command"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe")
    }


def test_daemonset_gives_the_host_folder_to_the_daemon_before_it_starts() -> None:
    """The init container chowns the hostPath folder to the image's ids, 0750."""
    spec = pod_spec(REPO / "deploy" / "kubernetes" / "daemonset.yaml", "DaemonSet")
    [init] = spec["initContainers"]
    uid, gid = image_ids()
    assert ["install", "-d", "-o", str(uid), "-g", str(gid), "-m", "0750", "/run/sidkeyd"] == init[
        "command"
    ]
    [socket] = [v for v in spec["volumes"] if v["name"] == "socket"]
    assert "/run/sidkeyd" == socket["hostPath"]["path"]


def test_daemonset_grace_period_exceeds_the_shutdown_timeout() -> None:
    """The kubelet's SIGKILL comes after the daemon's own bounded shutdown."""
    path = REPO / "deploy" / "kubernetes" / "daemonset.yaml"
    grace = pod_spec(path, "DaemonSet")["terminationGracePeriodSeconds"]
    assert embedded_config(path).server.shutdown_timeout.total_seconds() < grace


def test_client_reaches_the_socket_by_group_and_is_allowed_by_uid() -> None:
    """The client pod is in the socket's group, mounts it read-only, and its uid is allowed."""
    spec = pod_spec(REPO / "deploy" / "kubernetes" / "client.yaml", "Deployment")
    config = embedded_config(REPO / "deploy" / "kubernetes" / "daemonset.yaml")
    [mount] = spec["containers"][0]["volumeMounts"]
    assert image_ids()[1] in spec["securityContext"]["supplementalGroups"]
    assert (True, "/run/sidkeyd") == (mount["readOnly"], mount["mountPath"])
    allow = config.environments["production"].allow
    assert allow is not None
    assert spec["securityContext"]["runAsUser"] in allow.uids


def test_sidecar_socket_is_in_a_folder_the_daemon_makes_inside_the_empty_dir() -> None:
    """An emptyDir is 0777, which the daemon refuses as the socket's own folder."""
    path = REPO / "deploy" / "kubernetes" / "sidecar.yaml"
    spec = pod_spec(path, "Deployment")
    [sidecar] = spec["initContainers"]
    assert "Always" == sidecar["restartPolicy"]
    socket = embedded_config(path).server.socket
    assert Path("/run/sidkeyd/socket") == socket.parent
    [volume_mount] = [m for m in sidecar["volumeMounts"] if m["name"] == "socket"]
    assert Path(volume_mount["mountPath"]) == socket.parent.parent


def test_compose_uses_the_image_ids() -> None:
    """compose.yaml's client joins the socket's group, with a uid its config allows."""
    compose = yaml.safe_load((REPO / "compose.yaml").read_text())
    client = compose["services"]["client"]
    config = parse_config(
        tomllib.loads((REPO / "config" / "sidkeyd.compose.toml").read_text()),
        base_dir=REPO / "config",
    )
    assert [str(image_ids()[1])] == client["group_add"]
    allow = config.environments["sandbox"].allow
    assert allow is not None
    assert int(client["user"].split(":")[0]) in allow.uids


def test_sidecar_app_container_gets_neither_the_iam_role_nor_a_service_account_token() -> None:
    """The pod's service account carries sidkeyd's role: IRSA's webhook would give it to the
    app too (which could then read the key from Secrets Manager) unless the app is skipped."""
    path = REPO / "deploy" / "kubernetes" / "sidecar.yaml"
    [deployment] = [d for d in documents(path) if d["kind"] == "Deployment"]
    template = deployment["spec"]["template"]
    apps = [c["name"] for c in template["spec"]["containers"]]
    skipped = template["metadata"].get("annotations", {}).get("eks.amazonaws.com/skip-containers")
    assert (apps, False) == (
        (skipped or "").split(","),
        template["spec"].get("automountServiceAccountToken", True),
    )
