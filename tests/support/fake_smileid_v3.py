"""A local fake of Smile ID's V3 API over HTTPS, with its own CA, for the token broker's tests.

    with fake_v3(partner_id="1622", api_key=KEY) as fake:
        fake.url, fake.ca_file       # https://127.0.0.1:PORT, the CA to trust
        fake.token_calls             # POST /v3/token requests seen, answered or not
        fake.rotate(NEW_KEY)         # the old key and every token minted with it now get 401
        fake.mode = "down" | "hang" | "5xx" | "malformed" | "ok"

``POST /v3/token`` checks the ``smileid-partner-id`` and ``smileid-api-key`` headers (401
otherwise) and answers a JWT whose ``exp`` is ``ttl_s`` ahead. ``GET /v3/status/{job}`` is the one
authenticated endpoint: its ``SmileID-Token`` must be a token this fake minted with the current
key and not expired (401 otherwise).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import ssl
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

SIGNING_SECRET = b"fake-smileid-v3-jwt-secret"  # the fake's own, not a partner key


@dataclass
class FakeV3:
    partner_id: str
    api_key: str
    url: str = ""
    ca_file: Path = Path()
    ttl_s: int = 3600
    with_exp: bool = True
    exp_override: Any = None  # an exp claim as given (Infinity, a string...), instead of ttl_s
    mode: str = "ok"
    token_calls: int = 0
    refused: int = 0
    authenticated_calls: int = 0
    generation: int = 0  # bumped by rotate(): tokens of older generations are refused
    released: threading.Event = field(default_factory=threading.Event)
    held: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    issued: list[str] = field(default_factory=list)  # every token minted (for the log scan)

    def rotate(self, new_key: str) -> None:
        with self.lock:
            self.api_key = new_key
            self.generation += 1

    def mint(self) -> str:
        claims: dict[str, Any] = {
            "sub": self.partner_id,
            "gen": self.generation,
            "jti": uuid.uuid4().hex,  # every token its own, as a real one
        }
        if self.exp_override is not None:
            claims["exp"] = self.exp_override
        elif self.with_exp:
            claims["exp"] = int(time.time()) + self.ttl_s
        token = _jwt(claims)
        self.issued.append(token)
        return token

    def valid(self, token: str) -> bool:
        try:
            head, payload, signature = token.split(".")
            mac = hmac.new(SIGNING_SECRET, f"{head}.{payload}".encode(), "sha256")
            expected = _b64(mac.digest())
            claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        except ValueError:
            return False
        return (
            hmac.compare_digest(expected, signature)
            and claims.get("gen") == self.generation
            and claims.get("exp", float("inf")) > time.time()
        )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jwt(claims: dict[str, Any]) -> str:
    head = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = _b64(json.dumps(claims).encode())
    signature = hmac.new(SIGNING_SECRET, f"{head}.{payload}".encode(), hashlib.sha256).digest()
    return f"{head}.{payload}.{_b64(signature)}"


def _certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 and localhost: (ca, cert, key) files."""
    now = dt.datetime.now(dt.UTC)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("fake smileid ca"))
        .issuer_name(name("fake smileid ca"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = folder / "ca.pem", folder / "cert.pem", folder / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


def _handler(fake: FakeV3) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            if self.path != "/v3/token":
                self._answer(404, {"error": "no such path"})
                return
            with fake.lock:
                fake.token_calls += 1
            if fake.mode == "down":
                self.close_connection = True
                return
            if fake.mode == "hang":
                fake.held.set()
                fake.released.wait(60)
                self.close_connection = True
                return
            if fake.mode == "drip":  # headers, then a byte now and then: no read times out
                self.send_response(200)
                self.send_header("Content-Length", "100000")
                self.end_headers()
                for _ in range(200):
                    if fake.released.wait(0.3):
                        break
                    self.wfile.write(b" ")
                    self.wfile.flush()
                self.close_connection = True
                return
            if fake.mode == "5xx":
                self._answer(503, {"error": "unavailable"})
                return
            if fake.mode == "malformed":
                self._answer(200, {"tok": "en"})
                return
            partner = self.headers.get("smileid-partner-id")
            key = self.headers.get("smileid-api-key")
            with fake.lock:
                good = partner == fake.partner_id and key == fake.api_key
                if not good:
                    fake.refused += 1
                token = fake.mint() if good else ""
            if not good:
                self._answer(401, {"error": "invalid credentials"})
                return
            self._answer(200, {"token": token})

        def do_GET(self) -> None:
            if not self.path.startswith("/v3/status/"):
                self._answer(404, {"error": "no such path"})
                return
            with fake.lock:
                fake.authenticated_calls += 1
                ok = fake.valid(self.headers.get("SmileID-Token", ""))
            if not ok:
                with fake.lock:
                    fake.refused += 1
                self._answer(401, {"error": "invalid token"})
                return
            job = self.path.rsplit("/", 1)[-1]
            self._answer(200, {"status": "clear", "job_id": job, "message": "Job completed"})

        def _answer(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@contextmanager
def fake_v3(partner_id: str, api_key: str, **options: Any) -> Iterator[FakeV3]:
    folder = Path(tempfile.mkdtemp(prefix="fake-v3-"))
    ca, cert, key = _certificates(folder)
    fake = FakeV3(partner_id=partner_id, api_key=api_key, ca_file=ca, **options)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    server.daemon_threads = True
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    fake.url = f"https://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="fake-v3", daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        fake.released.set()
        server.shutdown()
        server.server_close()
        thread.join(10)
        for path in (ca, cert, key):
            path.unlink(missing_ok=True)
        folder.rmdir()
