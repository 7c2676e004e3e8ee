"""A real moto server on loopback, for the AWS source's tests; no boto3 mocking anywhere.

``moto_endpoint`` (session scope) starts ``moto_server`` from the venv on a free port, waits until
it answers, and sets fake credentials in ``os.environ`` so that boto3's standard chain, in the
tests and in daemons they start, finds them. Everything is restored at teardown.

moto serves every region on one endpoint (the region comes from the request's signature), so a
regional outage is simulated by ``MotoEndpoint.outage_front()``: a real HTTP front that forwards
to moto and drops the connection of any request signed for a region marked down.
"""

from __future__ import annotations

import http.client
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import pytest

if TYPE_CHECKING:
    from mypy_boto3_secretsmanager import SecretsManagerClient

REGION = "us-east-1"
STARTUP_DEADLINE_S = 30.0
FAKE_ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}
# Variables that would take precedence over, or add to, the fake credentials above.
CLEARED_ENVIRONMENT = (
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_SECRETS_MANAGER",
    "AWS_ENDPOINT_URL_STS",
)
_SIGNED_REGION = re.compile(r"Credential=[^/]+/\d{8}/([^/]+)/")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def closed_port_url() -> str:
    """An http URL on loopback where nothing listens: connections are refused at once."""
    return f"http://127.0.0.1:{free_port()}"


@dataclass
class OutageFront:
    """A forwarding front to moto; requests signed for a region in ``down`` get no answer."""

    url: str
    down: set[str] = field(default_factory=set)


@dataclass
class MotoEndpoint:
    url: str
    region: str = REGION

    def client(self, region: str | None = None) -> SecretsManagerClient:
        """A test-side Secrets Manager client on the server, with the fake credentials."""
        return boto3.client(
            "secretsmanager",
            region_name=region or self.region,
            endpoint_url=self.url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    @staticmethod
    def secret_name(prefix: str = "smileid") -> str:
        """A name no other test uses: the server is shared by the whole session."""
        return f"{prefix}/{uuid.uuid4().hex[:12]}"

    @contextmanager
    def outage_front(self, down: set[str] | None = None) -> Iterator[OutageFront]:
        front = OutageFront(url="", down=set(down or ()))
        server = ThreadingHTTPServer(("127.0.0.1", 0), _front_handler(self.url, front))
        server.daemon_threads = True
        front.url = f"http://127.0.0.1:{server.server_address[1]}"
        thread = threading.Thread(target=server.serve_forever, name="moto-front", daemon=True)
        thread.start()
        try:
            yield front
        finally:
            server.shutdown()
            server.server_close()
            thread.join()


def _front_handler(upstream: str, front: OutageFront) -> type[BaseHTTPRequestHandler]:
    host, port = upstream.removeprefix("http://").split(":")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            signed = _SIGNED_REGION.search(self.headers.get("Authorization", ""))
            if signed is not None and signed.group(1) in front.down:
                self.close_connection = True  # no answer at all: the region is "down"
                return
            conn = http.client.HTTPConnection(host, int(port), timeout=30)
            try:
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                conn.request("POST", self.path, body=body, headers=headers)
                answer = conn.getresponse()
                payload = answer.read()
            finally:
                conn.close()
            self.send_response(answer.status)
            for name, value in answer.getheaders():
                if name.lower() not in ("connection", "transfer-encoding", "content-length"):
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


def _wait_until_up(process: subprocess.Popen[bytes], url: str) -> None:
    deadline = time.monotonic() + STARTUP_DEADLINE_S
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"moto_server exited with {process.returncode} before answering")
        try:
            with urllib.request.urlopen(f"{url}/moto-api/", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"moto_server did not answer on {url} within {STARTUP_DEADLINE_S}s")
        time.sleep(0.05)  # polling interval of a bounded wait, not a fixed delay


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoEndpoint]:
    executable = Path(sys.executable).with_name("moto_server")
    if not executable.exists():
        pytest.skip(f"{executable} not found: install moto[server]")
    saved = {name: os.environ.get(name) for name in (*FAKE_ENVIRONMENT, *CLEARED_ENVIRONMENT)}
    os.environ.update(FAKE_ENVIRONMENT)
    for name in CLEARED_ENVIRONMENT:
        os.environ.pop(name, None)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path_factory.mktemp("moto") / "moto_server.log").open("wb")
    process = subprocess.Popen(
        [str(executable), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log
    )
    try:
        _wait_until_up(process, url)
        yield MotoEndpoint(url=url)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
