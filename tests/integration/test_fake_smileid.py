"""The fake Smile ID server itself: strict about signatures, signs its job-status answers."""

from __future__ import annotations

import io
import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

import pytest

from support.fake_smileid import FakeSmileId, smile_signature
from support.signatures import expected_signature

KEY = "fake-smileid-test-key-4c1d"
NEW_KEY = "fake-smileid-rotated-key-9e2a"
PARTNER = "085"
TESTS_DIR = Path(__file__).resolve().parents[1]


def post(url: str, body: dict[str, Any], context: ssl.SSLContext | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def signed(key: str, **fields: Any) -> dict[str, Any]:
    timestamp = "2026-11-25T22:04:11.123Z"
    return {
        "timestamp": timestamp,
        "signature": expected_signature(key, timestamp, PARTNER),
        **fields,
    }


def test_the_fake_signs_as_the_oracle_does() -> None:
    """The fake's own HMAC matches the suite's independent oracle."""
    assert expected_signature(KEY, "t", PARTNER) == smile_signature(KEY, "t", PARTNER)


def test_a_correct_signature_is_accepted_and_counted() -> None:
    """A request signed with the fake's key gets 200 and counts one call, no refusal."""
    with FakeSmileId(KEY, PARTNER) as fake:
        status, _ = post(f"{fake.url}/id_verification", signed(KEY, partner_id=PARTNER))
        assert (200, 1, 0) == (status, fake.calls["id_verification"], fake.refused)


def test_a_wrong_key_gets_401_and_counts_a_refusal() -> None:
    """A signature made with another key is refused with 401 and counted in ``refused``."""
    with FakeSmileId(KEY, PARTNER) as fake:
        status, body = post(f"{fake.url}/token", signed("not-the-key", partner_id=PARTNER))
        assert (401, 1, 1) == (status, fake.refused, fake.refused_by["token"])
        assert KEY not in json.dumps(body)


def test_another_partner_id_is_refused() -> None:
    """A correct HMAC for another partner id is still refused."""
    with FakeSmileId(KEY, PARTNER) as fake:
        timestamp = "2026-11-25T22:04:11.123Z"
        body = {"timestamp": timestamp, "partner_id": "999"}
        body["signature"] = expected_signature(KEY, timestamp, "999")
        assert 401 == post(f"{fake.url}/id_verification", body)[0]


def test_rotate_refuses_the_old_key() -> None:
    """After ``rotate`` the old key's signatures get 401 and the new key's are accepted."""
    with FakeSmileId(KEY, PARTNER) as fake:
        fake.rotate(NEW_KEY)
        old = post(f"{fake.url}/token", signed(KEY, partner_id=PARTNER))[0]
        new = post(f"{fake.url}/token", signed(NEW_KEY, partner_id=PARTNER))[0]
        assert (401, 200) == (old, new)


def test_job_status_answers_are_signed_with_the_current_key() -> None:
    """The job-status answer carries a signature of its own timestamp made with the key."""
    with FakeSmileId(KEY, PARTNER) as fake:
        _, body = post(f"{fake.url}/job_status", signed(KEY, partner_id=PARTNER, job_id="1"))
        assert expected_signature(KEY, body["timestamp"], PARTNER) == body["signature"]


def zip_with(misc: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("info.json", json.dumps({"misc_information": misc}))
    return buffer.getvalue()


def put(url: str, data: bytes) -> int:
    request = urllib.request.Request(url, data, {"Content-Type": "application/zip"}, method="PUT")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


def test_the_presigned_upload_checks_the_signature_in_info_json() -> None:
    """The zip PUT is accepted with a good info.json signature and refused with a stale one."""
    with FakeSmileId(KEY, PARTNER) as fake:
        _, prep = post(f"{fake.url}/upload", signed(KEY, smile_client_id=PARTNER))
        good = put(prep["upload_url"], zip_with(signed(KEY, smile_client_id=PARTNER)))
        stale = put(prep["upload_url"], zip_with(signed("old-key", smile_client_id=PARTNER)))
        assert (200, 401, 1) == (good, stale, fake.refused_by["zip"])


def wait_for_file(path: Path, process: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + 30
    while not path.exists():
        assert process.poll() is None, "the fake exited early"
        assert time.monotonic() < deadline, "no port file"
        time.sleep(0.05)  # polling a file another process writes: no event to await
    return path.read_text()


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_the_process_entry_point_serves_rotates_by_key_file_and_reports_stats(
    tmp_path: Path, tls: bool
) -> None:
    """``python -m support.fake_smileid``: port file, key-file rotation, ``/_fake/stats``."""
    key_file, port_file = tmp_path / "key", tmp_path / "port"
    key_file.write_text(KEY)
    args = ["--key-file", str(key_file), "--partner-id", PARTNER, "--port-file", str(port_file)]
    if tls:
        args += ["--tls-dir", str(tmp_path / "tls")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), *sys.path])}
    process = subprocess.Popen([sys.executable, "-m", "support.fake_smileid", *args], env=env)
    try:
        port = wait_for_file(port_file, process)
        scheme = "https" if tls else "http"
        context = ssl.create_default_context(cafile=tmp_path / "tls" / "ca.pem") if tls else None
        url = f"{scheme}://127.0.0.1:{port}/v1"
        first = post(f"{url}/token", signed(KEY, partner_id=PARTNER), context)[0]
        key_file.write_text(NEW_KEY)
        second = post(f"{url}/token", signed(KEY, partner_id=PARTNER), context)[0]
        with urllib.request.urlopen(
            f"{scheme}://127.0.0.1:{port}/_fake/stats", timeout=10, context=context
        ) as response:
            stats = json.loads(response.read())
        assert (200, 401) == (first, second)
        assert {"calls": {"token": 2}, "refused": 1, "refused_by": {"token": 1}} == stats
    finally:
        process.send_signal(signal.SIGTERM)
        assert 0 == process.wait(30)
