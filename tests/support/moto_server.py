"""A real moto server on loopback, for the AWS source's tests; no boto3 mocking anywhere.

``moto_endpoint`` (session scope) starts ``moto_server`` from the venv on a free port, waits until
it answers, and sets fake credentials in ``os.environ`` so that boto3's standard chain, in the
tests and in daemons they start, finds them. Everything is restored at teardown. Outside pytest
(bench/convergence.py), ``fake_credentials()`` and ``moto_server()`` do the same.

moto serves every region on one endpoint (the region comes from the request's signature), so a
regional outage is simulated by ``MotoEndpoint.outage_front()``: a real HTTP front that forwards
to moto and drops the connection of any request signed for a region marked down. The front also
counts the operations it sees on the wire (``OutageFront.count``) and can answer
``AccessDeniedException`` for chosen secrets (``OutageFront.denied``).

For change notifications, ``MotoEndpoint.queue()`` creates an SQS queue on the same server and
``change_event()`` builds the EventBridge event Secrets Manager's CloudTrail records become.
"""

from __future__ import annotations

import http.client
import json
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
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import pytest

from sidkeyd.config import AwsSourceConfig

if TYPE_CHECKING:
    from mypy_boto3_secretsmanager import SecretsManagerClient
    from mypy_boto3_sqs import SQSClient

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
ACCOUNT = "123456789012"  # moto's default account


def relay(handler: BaseHTTPRequestHandler, host: str, port: int, body: bytes) -> None:
    """Forward ``handler``'s POST (its ``body`` already read) to ``host:port`` and copy the
    answer back, framed by Content-Length."""
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        headers = {k: v for k, v in handler.headers.items() if k.lower() != "connection"}
        conn.request("POST", handler.path, body=body, headers=headers)
        answer = conn.getresponse()
        payload = answer.read()
    finally:
        conn.close()
    handler.send_response(answer.status)
    for name, value in answer.getheaders():
        if name.lower() not in ("connection", "transfer-encoding", "content-length"):
            handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(payload)))
    handler.end_headers()
    handler.wfile.write(payload)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def closed_port_url() -> str:
    """An http URL on loopback where nothing listens: connections are refused at once."""
    return f"http://127.0.0.1:{free_port()}"


def source_config(endpoint_url: str | None, **overrides: Any) -> AwsSourceConfig:
    """An aws source in REGION with one attempt per call and short timeouts: a failure shows at
    once, without retry sleeps."""
    settings: dict[str, Any] = {
        "name": "aws",
        "region": REGION,
        "endpoint_url": endpoint_url,
        "max_attempts": 1,
        "connect_timeout": timedelta(seconds=2),
        "read_timeout": timedelta(seconds=5),
    }
    settings.update(overrides)
    return AwsSourceConfig(**settings)


@dataclass
class OutageFront:
    """A forwarding front to moto.

    Requests signed for a region in ``down`` get no answer (the connection is dropped); Secrets
    Manager requests whose ``SecretId`` is in ``denied`` get an ``AccessDeniedException``;
    every request's operation (``X-Amz-Target``, e.g. ``secretsmanager.GetSecretValue``) is
    recorded in ``operations``, answered or not.
    """

    url: str
    down: set[str] = field(default_factory=set)
    denied: set[str] = field(default_factory=set)
    operations: list[str] = field(default_factory=list)
    # A hostile or buggy endpoint: every Secrets Manager request gets this (status, JSON body).
    answer_with: tuple[int, dict[str, Any]] | None = None
    # A black hole: requests are held unanswered until the front shuts down.
    hanging: bool = False
    held: threading.Event = field(default_factory=threading.Event)  # a request is being held
    released: threading.Event = field(default_factory=threading.Event)

    def count(self, operation: str) -> int:
        """How many requests for ``operation`` (``"GetSecretValue"``, say) reached the front."""
        return sum(1 for seen in list(self.operations) if seen.rsplit(".", 1)[-1] == operation)


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

    def sqs(self, region: str | None = None) -> SQSClient:
        """A test-side SQS client on the server, with the fake credentials."""
        return boto3.client(
            "sqs",
            region_name=region or self.region,
            endpoint_url=self.url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def queue(self, prefix: str = "sidkeyd-notify") -> str:
        """A new, empty SQS queue no other test uses; returns its URL."""
        return self.sqs().create_queue(QueueName=f"{prefix}-{uuid.uuid4().hex[:12]}")["QueueUrl"]

    def queue_depth(self, queue_url: str) -> int:
        """Messages in the queue, visible or in flight (received but not deleted)."""
        attributes = self.sqs().get_queue_attributes(
            QueueUrl=queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return int(attributes["ApproximateNumberOfMessages"]) + int(
            attributes["ApproximateNumberOfMessagesNotVisible"]
        )

    def secret_arn(self, name: str, region: str | None = None) -> str:
        return self.client(region).describe_secret(SecretId=name)["ARN"]

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
            front.released.set()
            server.shutdown()
            server.server_close()
            thread.join()


def change_event(
    secret_id: str, event_name: str = "PutSecretValue", *, region: str = REGION
) -> dict[str, Any]:
    """The EventBridge event for a Secrets Manager API call recorded by CloudTrail.

    ``RotationSucceeded`` is a service event: its secret is in ``additionalEventData``.
    """
    detail: dict[str, Any] = {
        "eventVersion": "1.08",
        "eventSource": "secretsmanager.amazonaws.com",
        "eventName": event_name,
        "awsRegion": region,
    }
    if event_name == "RotationSucceeded":
        detail_type = "AWS Service Event via CloudTrail"
        detail["additionalEventData"] = {"SecretId": secret_id}
    else:
        detail_type = "AWS API Call via CloudTrail"
        detail["requestParameters"] = {"secretId": secret_id}
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": detail_type,
        "source": "aws.secretsmanager",
        "account": ACCOUNT,
        "time": "2024-01-01T00:00:00Z",
        "region": region,
        "resources": [],
        "detail": detail,
    }


def sns_wrapped(event: dict[str, Any]) -> dict[str, Any]:
    """``event`` as SNS delivers it to an SQS subscription without raw message delivery."""
    return {
        "Type": "Notification",
        "MessageId": str(uuid.uuid4()),
        "TopicArn": f"arn:aws:sns:{REGION}:{ACCOUNT}:secrets-changed",
        "Message": json.dumps(event),
        "Timestamp": "2024-01-01T00:00:00.000Z",
    }


def _access_denied(secret_id: str) -> bytes:
    return json.dumps(
        {
            "__type": "AccessDeniedException",
            "message": f"not authorized to perform this operation on {secret_id}",
        }
    ).encode()


def _front_handler(upstream: str, front: OutageFront) -> type[BaseHTTPRequestHandler]:
    host, port = upstream.removeprefix("http://").split(":")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            target = self.headers.get("X-Amz-Target", "")
            front.operations.append(target)
            signed = _SIGNED_REGION.search(self.headers.get("Authorization", ""))
            if signed is not None and signed.group(1) in front.down:
                self.close_connection = True  # no answer at all: the region is "down"
                return
            if front.hanging:
                front.held.set()
                front.released.wait()
                self.close_connection = True
                return
            if front.answer_with is not None and target.startswith("secretsmanager."):
                status, error = front.answer_with
                self._answer(status, json.dumps(error).encode(), "application/x-amz-json-1.1")
                return
            secret_id = _secret_id(target, body)
            if secret_id is not None and secret_id in front.denied:
                self._answer(400, _access_denied(secret_id), "application/x-amz-json-1.1")
                return
            relay(self, host, int(port), body)

        def _answer(self, status: int, payload: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


def _secret_id(target: str, body: bytes) -> str | None:
    """The ``SecretId`` of a Secrets Manager JSON request, if it is one."""
    if not target.startswith("secretsmanager."):
        return None
    try:
        secret_id = json.loads(body).get("SecretId")
    except (ValueError, AttributeError):
        return None
    return secret_id if isinstance(secret_id, str) else None


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


@contextmanager
def moto_server(log_path: Path) -> Iterator[MotoEndpoint]:
    """Run ``moto_server`` from the venv on a free loopback port until the block ends.

    The caller provides the credentials (``fake_credentials()``); the server needs none.
    """
    executable = Path(sys.executable).with_name("moto_server")
    if not executable.exists():
        raise FileNotFoundError(f"{executable} not found: install moto[server]")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
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


@contextmanager
def fake_credentials() -> Iterator[None]:
    """Fake credentials in ``os.environ`` (inherited by daemons started meanwhile), restored after.

    boto3's standard chain finds them, and nothing else: variables that would take precedence
    or add to them are removed for the duration.
    """
    saved = {name: os.environ.get(name) for name in (*FAKE_ENVIRONMENT, *CLEARED_ENVIRONMENT)}
    os.environ.update(FAKE_ENVIRONMENT)
    for name in CLEARED_ENVIRONMENT:
        os.environ.pop(name, None)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoEndpoint]:
    if not Path(sys.executable).with_name("moto_server").exists():
        pytest.skip("moto_server not found in the venv: install moto[server]")
    log_path = tmp_path_factory.mktemp("moto") / "moto_server.log"
    with fake_credentials(), moto_server(log_path) as endpoint:
        yield endpoint
