"""The Vault `kubernetes` login as deploy/kubernetes/ uses it: the request hvac sends.

A Kubernetes auth mount can only be tried for real with a Kubernetes API for Vault to ask
(TokenReview), so a loopback HTTP server stands in for Vault and records each login request.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import hvac
import pytest

from sidkeyd.config import VaultAuthConfig
from sidkeyd.errors import PermanentSourceError
from sidkeyd.sources.vault.login import KubernetesLogin

LOGINS: list[tuple[str, dict[str, Any]]] = []


class FakeVault(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        LOGINS.append((self.path, body))
        auth = {"client_token": "s.k8s-login-token", "lease_duration": 3600, "renewable": True}
        payload = json.dumps({"auth": auth}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        return None


@pytest.fixture
def vault() -> Iterator[hvac.Client]:
    LOGINS.clear()
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeVault)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hvac.Client(url=f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()


def no_secrets() -> tuple[str, ...]:
    return ()


def test_login_posts_the_role_and_the_service_account_token(
    vault: hvac.Client, tmp_path: Path
) -> None:
    """POST auth/kubernetes/login with {role, jwt}; the answer's token is the lease."""
    jwt_file = tmp_path / "token"
    jwt_file.write_text("eyJ.first-token.sig\n")
    method = KubernetesLogin(
        VaultAuthConfig(method="kubernetes", role="sidkeyd", jwt_file=jwt_file), "vault"
    )
    lease = method.login(vault, no_secrets)
    assert [("/v1/auth/kubernetes/login", {"role": "sidkeyd", "jwt": "eyJ.first-token.sig"})] == (
        LOGINS
    )
    assert ("s.k8s-login-token", 3600.0, True) == (lease.token.reveal(), lease.ttl, lease.renewable)


def test_each_login_reads_the_token_file_again(vault: hvac.Client, tmp_path: Path) -> None:
    """The kubelet rotates projected tokens: a later login sends the file's new token."""
    jwt_file = tmp_path / "token"
    method = KubernetesLogin(
        VaultAuthConfig(method="kubernetes", role="sidkeyd", jwt_file=jwt_file), "vault"
    )
    for token in ("eyJ.old.sig", "eyJ.rotated.sig"):
        jwt_file.write_text(token)
        method.login(vault, no_secrets)
    assert ["eyJ.old.sig", "eyJ.rotated.sig"] == [body["jwt"] for _, body in LOGINS]


def test_auth_mount_names_the_login_path(vault: hvac.Client, tmp_path: Path) -> None:
    """One auth mount per cluster (auth.mount = "k8s-eu"): the login goes there."""
    jwt_file = tmp_path / "token"
    jwt_file.write_text("eyJ.t.sig")
    auth = VaultAuthConfig(method="kubernetes", mount="k8s-eu", role="sidkeyd", jwt_file=jwt_file)
    KubernetesLogin(auth, "vault").login(vault, no_secrets)
    assert ["/v1/auth/k8s-eu/login"] == [path for path, _ in LOGINS]


def test_unreadable_token_file_is_named(vault: hvac.Client, tmp_path: Path) -> None:
    """A missing service account token (automountServiceAccountToken: false) names the file."""
    jwt_file = tmp_path / "absent"
    method = KubernetesLogin(
        VaultAuthConfig(method="kubernetes", role="sidkeyd", jwt_file=jwt_file), "vault"
    )
    with pytest.raises(PermanentSourceError) as caught:
        method.login(vault, no_secrets)
    assert ("credentials_unavailable", f"jwt file {jwt_file} does not exist") == (
        caught.value.code,
        str(caught.value),
    )
    assert [] == LOGINS
