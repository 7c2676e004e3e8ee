"""A real OpenBao dev server on loopback, for the Vault source's tests.

``openbao`` is one server for the whole session; tests keep out of each other's way by using
unique paths, policies and roles (``server.unique("name")``). Tests that seal the server start
their own with ``OpenBao.start(folder)`` so a failure cannot leave the shared one sealed.

``CountingProxy`` sits between a client and a server and records every request it forwards,
so that a test can count the reads that really reached the backend; it can also hold requests
until the test releases them.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from http.client import HTTPConnection
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

import hvac
import pytest
import requests

STARTUP_TIMEOUT = 30.0
HOLD_TIMEOUT = 30.0  # a held request is forwarded after this long even if never released
BAO = Path(sys.executable).parent / "bao"
_UNSEAL_KEY = re.compile(r"^Unseal Key: (\S+)\s*$", re.MULTILINE)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class OpenBao:
    """A running ``bao server -dev``: its address, root token, unseal key and an admin client."""

    def __init__(
        self, process: subprocess.Popen[bytes], url: str, root_token: str, log_path: Path
    ) -> None:
        self.process = process
        self.url = url
        self.root_token = root_token
        self.log_path = log_path
        self.unseal_key = ""
        self.admin = hvac.Client(url=url, token=root_token, timeout=10)
        self._approle_enabled = False

    # -- lifecycle -----------------------------------------------------------------------

    @classmethod
    def start(cls, folder: Path, extra_args: tuple[str, ...] = ()) -> OpenBao:
        """Start a dev server on a free loopback port and wait until it answers, unsealed."""
        folder.mkdir(parents=True, exist_ok=True)
        port = free_port()
        root_token = "root-" + secrets.token_hex(12)
        log_path = folder / "openbao.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        env["HOME"] = str(folder)  # the dev server must not touch the real ~/.vault-token
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [
                    str(BAO),
                    "server",
                    "-dev",
                    "-dev-no-store-token",
                    f"-dev-root-token-id={root_token}",
                    f"-dev-listen-address=127.0.0.1:{port}",
                    *extra_args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=folder,
            )
        server = cls(process, f"http://127.0.0.1:{port}", root_token, log_path)
        try:
            server.unseal_key = server._wait_until_ready()
        except BaseException:
            server.stop()
            raise
        return server

    def _wait_until_ready(self) -> str:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"bao exited ({self.process.returncode}):\n{self.log_tail()}")
            match = _UNSEAL_KEY.search(self.log_path.read_text(errors="replace"))
            if match and self.healthy():
                return match.group(1)
            time.sleep(0.05)
        raise RuntimeError(f"bao not ready within {STARTUP_TIMEOUT}s:\n{self.log_tail()}")

    def healthy(self) -> bool:
        """``/v1/sys/health`` answers 200: initialized, unsealed, active."""
        try:
            return requests.get(f"{self.url}/v1/sys/health", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.admin.adapter.close()

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    # -- seal ----------------------------------------------------------------------------

    def seal(self) -> None:
        self.admin.sys.seal()

    def unseal(self) -> None:
        """Unseal and wait until the server is active again (bounded)."""
        self.admin.sys.submit_unseal_key(self.unseal_key)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not self.healthy():
            if time.monotonic() > deadline:
                raise RuntimeError(f"bao not active after unseal:\n{self.log_tail()}")
            time.sleep(0.05)

    # -- fixtures for tests --------------------------------------------------------------

    @staticmethod
    def unique(prefix: str) -> str:
        return f"{prefix}-{secrets.token_hex(4)}"

    def kv2_put(self, path: str, data: dict[str, Any], mount: str = "secret") -> int:
        """Write a new KV v2 version; returns its number."""
        response = self.admin.secrets.kv.v2.create_or_update_secret(
            path=path, secret=data, mount_point=mount
        )
        return int(response["data"]["version"])

    def kv1_mount(self) -> str:
        """A fresh KV v1 mount; returns its path."""
        mount = self.unique("kv1")
        self.admin.sys.enable_secrets_engine("kv", path=mount, options={"version": "1"})
        return mount

    def kv1_put(self, mount: str, path: str, data: dict[str, Any]) -> None:
        self.admin.secrets.kv.v1.create_or_update_secret(path=path, secret=data, mount_point=mount)

    def policy(self, rules: str) -> str:
        """A new ACL policy with ``rules`` (HCL); returns its name."""
        name = self.unique("policy")
        self.admin.sys.create_or_update_policy(name=name, policy=rules)
        return name

    def token(self, policies: list[str], ttl: str = "1h", renewable: bool = True) -> str:
        response = self.admin.auth.token.create(
            policies=policies, ttl=ttl, renewable=renewable, no_parent=True
        )
        token: str = response["auth"]["client_token"]
        return token

    def approle(
        self,
        policies: list[str],
        *,
        token_ttl: str = "1h",
        token_max_ttl: str = "4h",
        secret_id_num_uses: int = 0,
    ) -> tuple[str, str, str]:
        """A new AppRole role at ``auth/approle``; returns (role name, role id, secret id)."""
        if not self._approle_enabled:
            if "approle/" not in self.admin.sys.list_auth_methods()["data"]:
                self.admin.sys.enable_auth_method("approle")
            self._approle_enabled = True
        role = self.unique("role")
        self.admin.auth.approle.create_or_update_approle(
            role_name=role,
            token_policies=policies,
            token_ttl=token_ttl,
            token_max_ttl=token_max_ttl,
            secret_id_num_uses=secret_id_num_uses,
        )
        role_id = self.admin.auth.approle.read_role_id(role)["data"]["role_id"]
        secret_id = self.admin.auth.approle.generate_secret_id(role)["data"]["secret_id"]
        return role, role_id, secret_id

    def revoke_approle_tokens(self) -> None:
        """Revoke every token issued by AppRole logins (as an operator cutting a host off)."""
        self.admin.sys.revoke_prefix("auth/approle/login")


class CountingProxy:
    """A plain HTTP proxy on loopback in front of ``upstream`` that records each request.

    with CountingProxy(server.url) as proxy:   # give proxy.url to the client
        mark = proxy.mark()
        ...
        proxy.kv2_reads(path, since=mark)      # [("GET", "/v1/secret/data/...")]
        proxy.hold()                           # requests now wait...
        proxy.wait_held(10)                    # ...one has arrived and waits
        proxy.release()                        # forward it, and those after it
    """

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise ValueError(f"CountingProxy needs an http://host:port upstream, not {upstream!r}")
        self._upstream = (parts.hostname, parts.port)
        self._lock = threading.Lock()
        self._seen: list[tuple[str, str]] = []
        self._open = threading.Event()
        self._open.set()
        self._held = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="counting-proxy", daemon=True
        )
        self._thread.start()

    def __enter__(self) -> CountingProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    # -- what went through ---------------------------------------------------------------

    def seen(self) -> list[tuple[str, str]]:
        """Every (method, path without query) forwarded so far, in arrival order."""
        with self._lock:
            return list(self._seen)

    def mark(self) -> int:
        """A position in ``seen()``, to look only at the requests made after it."""
        with self._lock:
            return len(self._seen)

    def kv2_reads(self, path: str, mount: str = "secret", since: int = 0) -> list[tuple[str, str]]:
        """The GETs of ``path``'s KV v2 data or metadata after ``since``."""
        wanted = {f"/v1/{mount}/data/{path}", f"/v1/{mount}/metadata/{path}"}
        return [(m, p) for m, p in self.seen()[since:] if m == "GET" and p in wanted]

    # -- holding requests ----------------------------------------------------------------

    def hold(self) -> None:
        """Requests arriving from now on wait for ``release()`` (at most HOLD_TIMEOUT)."""
        self._held.clear()
        self._open.clear()

    def wait_held(self, timeout: float) -> bool:
        """Wait until a request is held; whether one was within ``timeout``."""
        return self._held.wait(timeout)

    def release(self) -> None:
        self._open.set()

    # -- forwarding ----------------------------------------------------------------------

    def _record(self, method: str, path: str) -> None:
        with self._lock:
            self._seen.append((method, path.split("?", 1)[0]))
        if not self._open.is_set():
            self._held.set()
            self._open.wait(HOLD_TIMEOUT)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(_ForwardingHandler):
            upstream = proxy._upstream
            record = staticmethod(proxy._record)

        return Handler


class _ForwardingHandler(BaseHTTPRequestHandler):
    """Forwards one request per connection (HTTP/1.0 answers: the client reconnects)."""

    upstream: ClassVar[tuple[str, int]]
    record: ClassVar[Any]
    HOP_BY_HOP: ClassVar[frozenset[str]] = frozenset(
        {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "upgrade"}
    )

    def _forward(self) -> None:
        self.record(self.command, self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {
            k: v for k, v in self.headers.items() if k.lower() not in self.HOP_BY_HOP | {"host"}
        }
        connection = HTTPConnection(*self.upstream, timeout=30)
        try:
            connection.request(self.command, self.path, body=body, headers=headers)
            response = connection.getresponse()
            payload = response.read()
            self.send_response(response.status, response.reason)
            for name, value in response.getheaders():
                if name.lower() not in self.HOP_BY_HOP | {"content-length", "date", "server"}:
                    self.send_header(name, value)
        except OSError:
            payload = b'{"errors": ["proxy: upstream unreachable"]}'
            self.send_response(502)
            self.send_header("Content-Type", "application/json")
        finally:
            connection.close()
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_LIST = _forward

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="session")
def openbao() -> Iterator[OpenBao]:
    folder = Path(tempfile.mkdtemp(prefix="sidkeyd-openbao-"))
    server = OpenBao.start(folder)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def private_openbao(tmp_path: Path) -> Iterator[OpenBao]:
    """A server of its own, for tests that seal it."""
    server = OpenBao.start(tmp_path / "openbao")
    try:
        yield server
    finally:
        server.stop()
