"""A strict fake of Smile ID's partner API, for SDK tests in any language.

It checks every request's signature with the real test key (a wrong one gets 401), signs its
job-status responses as Smile ID does, and accepts the presigned-upload step (checking the
signature inside the zip's ``info.json``). In-process::

    with FakeSmileId(api_key, partner_id="085") as fake:
        WebApi("085", "", "sidkeyd:sandbox", fake.url)   # sid_server: any URL string
        fake.calls["job_status"], fake.refused, fake.refused_by["upload"]
        fake.rotate(new_key)                              # old signatures get 401 from now on

As a process (for the Node tests)::

    python -m support.fake_smileid --key-file KEY --partner-id 085 --port-file PORT \
        [--tls-dir DIR]          # run from tests/ or with PYTHONPATH=tests

``KEY`` holds the raw key and is re-read at every request, so rewriting it rotates the key.
``PORT`` is written (atomically) once the server listens. ``GET /_fake/stats`` answers
``{"calls": {...}, "refused": N, "refused_by": {...}}``. With ``--tls-dir`` the fake serves
HTTPS with a certificate for 127.0.0.1 from its own CA, written to ``DIR/ca.pem``: point Node
at it with ``NODE_EXTRA_CA_CERTS=DIR/ca.pem`` and ``sid_server = "127.0.0.1:PORT/v1"`` (the
Node SDK prefixes ``https://``). The Python SDK takes ``fake.url`` (``http(s)://127.0.0.1:PORT/v1``).

Endpoint names in ``calls``/``refused_by``: ``id_verification``, ``business_verification``,
``upload`` (the prep-upload POST), ``zip`` (the presigned PUT), ``job_status``, ``token``.
The key is never logged, echoed or put in a response.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import hashlib
import hmac
import io
import itertools
import json
import os
import signal
import ssl
import threading
import zipfile
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

API_PREFIX = "/v1/"
ZIP_PREFIX = "/presigned/"
SIGNED_ENDPOINTS = ("id_verification", "business_verification", "upload", "job_status", "token")


def smile_signature(key: str, timestamp: str, partner_id: str) -> str:
    """base64(HMAC-SHA256(key, timestamp + partner_id + "sid_request"))."""
    mac = hmac.new(key.encode(), f"{timestamp}{partner_id}sid_request".encode(), hashlib.sha256)
    return base64.b64encode(mac.digest()).decode()


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")


class FakeSmileId:
    """Smile ID's partner API on 127.0.0.1, strict about signatures; a context manager."""

    def __init__(
        self,
        api_key: str | None = None,
        partner_id: str = "085",
        *,
        key_file: Path | None = None,
        tls_dir: Path | None = None,
        polls_until_complete: int = 1,
        port: int = 0,
        response_key: str | None = None,
    ) -> None:
        if (api_key is None) == (key_file is None):
            raise ValueError("give exactly one of api_key and key_file")
        self.partner_id = partner_id
        self.polls_until_complete = polls_until_complete
        self.response_key = response_key  # an impostor's key for job-status answers
        self.calls: Counter[str] = Counter()
        self.refused_by: Counter[str] = Counter()
        self.ca_file: Path | None = None
        self._key = api_key
        self._key_file = key_file
        self._lock = threading.Lock()
        self._jobs: dict[str, int] = {}  # upload token -> job_status polls seen
        self._job_ids = itertools.count(1)
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler_class())
        self._server.daemon_threads = True
        self.scheme = "http"
        if tls_dir is not None:
            self._wrap_tls(tls_dir)
        self._thread: threading.Thread | None = None

    # -- the API a test uses -------------------------------------------------------------

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """The SDK's ``sid_server``: the base URL, ``/v1`` included."""
        return f"{self.scheme}://127.0.0.1:{self.port}/v1"

    @property
    def refused(self) -> int:
        with self._lock:
            return sum(self.refused_by.values())

    def rotate(self, new_key: str) -> None:
        """Smile ID's rotation: the old key is refused from the next request on."""
        with self._lock:
            if self._key_file is not None:
                self._key_file.write_text(new_key)
            else:
                self._key = new_key

    def reset_counts(self) -> None:
        with self._lock:
            self.calls.clear()
            self.refused_by.clear()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "calls": dict(self.calls),
                "refused": sum(self.refused_by.values()),
                "refused_by": dict(self.refused_by),
            }

    def start(self) -> FakeSmileId:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="fake-smileid", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> FakeSmileId:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:  # never the key
        return f"FakeSmileId(url={self.url!r}, partner_id={self.partner_id!r})"

    # -- Smile ID's behaviour ------------------------------------------------------------

    def current_key(self) -> str:
        if self._key_file is not None:
            return self._key_file.read_text().strip()
        assert self._key is not None
        return self._key

    def signed_ok(self, fields: dict[str, Any], partner_field: str = "partner_id") -> bool:
        timestamp, signature = fields.get("timestamp"), fields.get("signature")
        partner_id = fields.get(partner_field)
        if not all(isinstance(v, str) and v for v in (timestamp, signature, partner_id)):
            return False
        expected = smile_signature(self.current_key(), str(timestamp), str(partner_id))
        return partner_id == self.partner_id and hmac.compare_digest(expected, str(signature))

    def answer_post(self, endpoint: str, body: dict[str, Any], base: str) -> dict[str, Any]:
        """The 200 answer to a correctly signed POST."""
        job = f"{next(self._job_ids):010d}"
        params = body.get("partner_params", {})
        if endpoint == "upload":
            with self._lock:
                self._jobs[job] = 0
            return {"upload_url": f"{base}{ZIP_PREFIX}{job}", "smile_job_id": job}
        if endpoint == "job_status":
            return self.job_status(body)
        if endpoint == "token":
            return {"success": True, "token": f"fake-web-token-{job}"}
        return {
            "ResultCode": "1012",
            "ResultText": "ID Number Validated",
            "SmileJobID": job,
            "PartnerParams": params,
        }

    def job_status(self, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            polls = self._jobs.get(str(body.get("job_id")), 0) + 1
            self._jobs[str(body.get("job_id"))] = polls
        timestamp = now_iso()
        return {
            "job_complete": polls >= self.polls_until_complete,
            "job_success": True,
            "code": "2302",
            "result": {"ResultCode": "0810", "ResultText": "Enroll User"},
            "timestamp": timestamp,
            "signature": smile_signature(
                self.response_key or self.current_key(), timestamp, self.partner_id
            ),
        }

    def zip_ok(self, payload: bytes) -> bool:
        try:
            with zipfile.ZipFile(io.BytesIO(payload)) as archive:
                info = json.loads(archive.read("info.json"))
            misc = info["misc_information"]
        except (zipfile.BadZipFile, KeyError, ValueError, TypeError):
            return False
        return isinstance(misc, dict) and self.signed_ok(misc, "smile_client_id")

    def count(self, endpoint: str, *, refused: bool) -> None:
        with self._lock:
            self.calls[endpoint] += 1
            if refused:
                self.refused_by[endpoint] += 1

    # -- HTTP ----------------------------------------------------------------------------

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                """Silent: nothing about requests goes to stderr."""

            def do_GET(self) -> None:
                if self.path == "/_fake/stats":
                    self._send(200, fake.stats())
                else:
                    self._send(404, {"error": "not found"})

            def do_POST(self) -> None:
                endpoint = self.path.removeprefix(API_PREFIX).strip("/")
                raw = self._body()
                if not self.path.startswith(API_PREFIX) or endpoint not in SIGNED_ENDPOINTS:
                    self._send(404, {"error": "not found"})
                    return
                try:
                    body = json.loads(raw)
                except ValueError:
                    self._send(400, {"error": "invalid json"})
                    return
                partner_field = "smile_client_id" if endpoint == "upload" else "partner_id"
                ok = isinstance(body, dict) and fake.signed_ok(body, partner_field)
                fake.count(endpoint, refused=not ok)
                if not ok:
                    self._send(401, {"code": "2205", "error": "You're not authorized to do that"})
                    return
                base = f"{fake.scheme}://{self.headers.get('Host', f'127.0.0.1:{fake.port}')}"
                self._send(200, fake.answer_post(endpoint, body, base))

            def do_PUT(self) -> None:
                raw = self._body()
                job = self.path.removeprefix(ZIP_PREFIX)
                with fake._lock:
                    known = self.path.startswith(ZIP_PREFIX) and job in fake._jobs
                if not known:
                    self._send(403, {"error": "unknown presigned url"})
                    return
                # Stricter than Smile ID, which fails such a job later: refuse at once.
                ok = fake.zip_ok(raw)
                fake.count("zip", refused=not ok)
                if ok:
                    self._send(200, {})
                else:
                    self._send(401, {"error": "info.json signature refused"})

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler

    def _wrap_tls(self, folder: Path) -> None:
        cert, key = make_tls_files(folder)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.scheme = "https"
        self.ca_file = folder / "ca.pem"


def make_tls_files(folder: Path) -> tuple[Path, Path]:
    """A throwaway CA (``ca.pem``) and a server certificate for 127.0.0.1 signed by it."""
    from ipaddress import IPv4Address

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    start = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    end = start + datetime.timedelta(days=2)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("fake-smileid test CA"))
        .issuer_name(name("fake-smileid test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(IPv4Address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM
    (folder / "ca.pem").write_bytes(ca.public_bytes(pem))
    cert_path, key_path = folder / "server.pem", folder / "server.key"
    cert_path.write_bytes(server.public_bytes(pem))
    key_path.write_bytes(
        server_key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m support.fake_smileid", description=__doc__)
    parser.add_argument("--key-file", type=Path, required=True, help="the raw key; re-read")
    parser.add_argument("--partner-id", required=True)
    parser.add_argument("--port-file", type=Path, required=True, help="written when listening")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tls-dir", type=Path, help="serve HTTPS; the CA goes to DIR/ca.pem")
    parser.add_argument("--polls-until-complete", type=int, default=1)
    args = parser.parse_args(argv)
    fake = FakeSmileId(
        partner_id=args.partner_id,
        key_file=args.key_file,
        tls_dir=args.tls_dir,
        polls_until_complete=args.polls_until_complete,
        port=args.port,
    )
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    with fake:
        write_atomically(args.port_file, str(fake.port))
        stop.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
