"""The audit trail with the daemon as a real process: a filesystem that fills, a stdout that is
closed or never read. Never a signature without its record, never a record without its answer,
never a frozen daemon.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pwd
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sidkeyd.client import Client
from sidkeyd.errors import DaemonUnavailableError, RequestFailedError
from support.configs import file_config, key_file
from support.daemon import Daemon

KEY = "audit-e2e-key-5b2c-not-real"
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
PROMPT_S = 5.0  # generous: write_timeout is 500ms; the bugs this guards against never answer


def unique_timestamps(count: int, offset: int) -> list[str]:
    """Distinct caller timestamps (microseconds) so each answer maps to one record."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return [f"{now}.{offset + i:06d}Z" for i in range(count)]


def audit_records(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]  # each line JSON


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs (we are root in CI); unmounted afterwards."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_filesystem_never_delivers_a_signature_without_its_record(
    start_daemon, small_tmpfs: Path
) -> None:
    """Filled during a signing load: every delivered signature has exactly one record, no
    record names an undelivered one, every line is JSON; freeing space resumes service."""
    filler = small_tmpfs / "filler"
    filler.write_bytes(b"\0" * (200 * 1024))  # leaves room for about a hundred records
    daemon = start_daemon(
        file_config(sections=f'[audit]\npath = "{small_tmpfs / "audit.jsonl"}"\n'),
        files=key_file(KEY),
    )
    delivered: list[str] = []
    refused: list[str] = []
    other: list[str] = []

    def load(offset: int) -> None:
        client = daemon.client()
        for timestamp in unique_timestamps(150, offset):
            try:
                delivered.append(client.sign("sandbox", timestamp)["timestamp"])
            except RequestFailedError as exc:
                (refused if exc.code == "audit_unavailable" else other).append(exc.code)

    threads = [threading.Thread(target=load, args=(n * 1000,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    records = audit_records(small_tmpfs / "audit.jsonl")
    issued = [r["signed_timestamp"] for r in records if r["event"] == "signature.issued"]
    assert [] == other
    assert refused, "the filesystem never filled"
    assert sorted(delivered) == sorted(issued)
    whole = audit_cli("verify", str(small_tmpfs / "audit.jsonl"))
    assert (0, "ok: ") == (whole.returncode, whole.stdout[:4]), whole.stdout
    filler.unlink()
    resumed = daemon.client().sign("sandbox")
    assert (True, {"status": "ok", "reason": None}) == (
        daemon.client().health()[0],
        daemon.client().health()[1]["audit"],
    )
    recorded = [r.get("signed_timestamp") for r in audit_records(small_tmpfs / "audit.jsonl")]
    assert resumed["timestamp"] in recorded
    daemon.assert_no_secret_in_logs([KEY])
    assert KEY not in (small_tmpfs / "audit.jsonl").read_text()


# -- stdout closed or never read ----------------------------------------------------------


class PipedDaemon:
    """The daemon with its stdout on a pipe this test holds (small: one page)."""

    def __init__(self, tmp_path: Path, config: str) -> None:
        folder = tmp_path / "piped"
        folder.mkdir()
        for name, text in key_file(KEY).items():
            (folder / name).write_text(text)
        self.layout = Daemon.write_config(folder, config)
        self.read_end, write_end = os.pipe()
        fcntl.fcntl(write_end, F_SETPIPE_SZ, os.sysconf("SC_PAGE_SIZE"))
        self.stderr = (folder / "stderr.log").open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sidkeyd", "serve", "-c", str(self.layout.config_path)],
            stdout=write_end,
            stderr=self.stderr,
        )
        os.close(write_end)
        self.output = b""
        self.read_until(b'"daemon.started"')

    def read_until(self, marker: bytes, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while marker not in self.output:
            ready, _, _ = select.select(
                [self.read_end], [], [], max(0.0, deadline - time.monotonic())
            )
            if not ready:
                raise AssertionError(f"no {marker!r} on stdout: {self.output[-2000:]!r}")
            chunk = os.read(self.read_end, 65536)
            if not chunk:
                raise AssertionError(f"stdout closed before {marker!r}: {self.output!r}")
            self.output += chunk

    def read_all_available(self) -> None:
        while select.select([self.read_end], [], [], 0.2)[0]:
            chunk = os.read(self.read_end, 65536)
            if not chunk:
                return
            self.output += chunk

    def close_stdout(self) -> None:
        os.close(self.read_end)
        self.read_end = -1

    def client(self) -> Client:
        return Client(self.layout.socket_path, timeout=PROMPT_S * 2)

    def terminate_within(self, seconds: float) -> int:
        """SIGTERM, and the exit status within ``seconds`` (killed and failed otherwise)."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(seconds)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"SIGTERM ignored for {seconds}s") from None

    def cleanup(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        if self.read_end >= 0:
            os.close(self.read_end)
        self.stderr.close()


@pytest.fixture
def piped(tmp_path: Path) -> Iterator[type[PipedDaemon]]:
    started: list[PipedDaemon] = []

    def start(config: str) -> PipedDaemon:
        daemon = PipedDaemon(tmp_path, config)
        started.append(daemon)
        return daemon

    yield start  # type: ignore[misc]
    for daemon in started:
        daemon.cleanup()


AUDIT_ON_STDOUT = file_config(sections="[audit]\nstdout = true\n")
NO_AUDIT = file_config()


def health_of(client: Client) -> tuple[bool, dict[str, object]]:
    return client.health()


def test_audit_on_a_closed_stdout_refuses_at_once_and_health_says_why(piped) -> None:
    """EPIPE: each sign is a prompt 503 audit_unavailable, health 503 naming EPIPE, and
    SIGTERM still stops the daemon."""
    daemon = piped(AUDIT_ON_STDOUT)
    daemon.close_stdout()
    client = daemon.client()
    for _ in range(5):
        with pytest.raises(RequestFailedError) as caught:
            client.sign("sandbox")
        assert (503, "audit_unavailable") == (caught.value.status, caught.value.code)
    healthy, health = health_of(client)
    assert (False, {"status": "failing", "reason": "EPIPE"}) == (healthy, health["audit"])
    metrics = daemon.layout.raw(b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert b'sidkeyd_audit_write_failures_total{reason="EPIPE"}' in metrics
    assert b'sidkeyd_requests_rejected_total{reason="audit_unavailable"} 5.0' in metrics
    client.close()
    assert 0 == daemon.terminate_within(PROMPT_S * 2)


def sign_until_refused(client: Client, refusals_wanted: int = 3) -> tuple[list[str], list[str]]:
    """Sign with fresh timestamps until ``refusals_wanted`` answers are refused (or 400 signs):
    the timestamps delivered and the refusal codes."""
    delivered: list[str] = []
    refusals: list[str] = []
    for timestamp in unique_timestamps(400, 0):
        try:
            delivered.append(client.sign("sandbox", timestamp)["timestamp"])
        except RequestFailedError as exc:
            refusals.append(exc.code)
            if len(refusals) == refusals_wanted:
                break
    return delivered, refusals


def test_audit_on_a_stdout_nobody_reads_refuses_promptly_then_resumes(piped) -> None:
    """A full pipe: signs get 503 within the write timeout, health answers (sink_blocked),
    and once the pipe is read again signing resumes with every answer recorded once."""
    daemon = piped(AUDIT_ON_STDOUT)
    client = daemon.client()
    delivered, refusals = sign_until_refused(client)
    assert ["audit_unavailable"] * 3 == refusals, "the pipe never filled"
    healthy, health = health_of(client)
    assert (False, "sink_blocked") == (healthy, health["audit"]["reason"])  # type: ignore[index]
    daemon.read_all_available()
    after = client.sign("sandbox", unique_timestamps(1, 900_000)[0])["timestamp"]
    daemon.read_until(after.encode())
    client.close()
    assert 0 == daemon.terminate_within(PROMPT_S * 2)
    daemon.read_all_available()
    lines = [json.loads(line) for line in daemon.output.splitlines() if line.strip()]
    audited = [r for r in lines if "seq" in r]
    voided = {r["voided_seq"] for r in audited if r["event"] == "audit.voided"}
    issued = [
        r["signed_timestamp"]
        for r in audited
        if r["event"] == "signature.issued" and r["seq"] not in voided
    ]
    assert sorted([*delivered, after]) == sorted(issued)
    stream = daemon.layout.config_path.parent / "stdout.jsonl"
    stream.write_bytes(daemon.output)
    whole = audit_cli("verify", str(stream))
    assert (0, "ok: ") == (whole.returncode, whole.stdout.splitlines()[-1][:4]), whole.stdout


def test_a_blocked_audit_pipe_does_not_hold_up_sigterm(piped) -> None:
    """Requests waiting on a full pipe are refused within the bound, and the daemon exits."""
    daemon = piped(AUDIT_ON_STDOUT)
    client = daemon.client()
    with contextlib.suppress(RequestFailedError):
        for _ in range(400):
            client.sign("sandbox")
    client.close()
    assert 0 == daemon.terminate_within(PROMPT_S * 2)


def test_the_operational_log_on_a_closed_stdout_never_stops_signing(piped) -> None:
    """The log drops what it cannot write: signs answer 200, health is ok, SIGTERM works."""
    daemon = piped(NO_AUDIT)
    daemon.close_stdout()
    client = daemon.client()
    signed = [client.sign("sandbox")["signature"] for _ in range(50)]
    assert 50 == len(signed)
    assert (True, "ok") == (health_of(client)[0], health_of(client)[1]["status"])
    client.close()
    assert 0 == daemon.terminate_within(PROMPT_S * 2)


def test_the_operational_log_on_a_pipe_nobody_reads_never_freezes_the_daemon(piped) -> None:
    """Far more log lines than the pipe holds: every sign and health answer comes, SIGTERM
    stops the daemon, and the dropped lines are said once stdout is read again."""
    daemon = piped(NO_AUDIT)
    client = daemon.client()
    try:
        for _ in range(2000):  # a signature.issued line each: the page fills at once
            client.sign("sandbox")
        healthy, _health = health_of(client)
    except DaemonUnavailableError as exc:
        raise AssertionError(f"the daemon froze on its log: {exc}") from None
    assert healthy
    daemon.read_all_available()
    client.sign("sandbox")
    daemon.read_until(b'"log.lines_dropped"')
    client.close()
    assert 0 == daemon.terminate_within(PROMPT_S * 2)


def test_sighup_reopens_the_file_and_the_chain_continues_into_it(start_daemon, tmp_path) -> None:
    """logrotate: the file moved, SIGHUP; the new file starts with audit.reopened chained to
    the old file's last record, and signatures are recorded there."""
    path = tmp_path / "audit.jsonl"
    daemon = start_daemon(file_config(sections=f'[audit]\npath = "{path}"\n'), files=key_file(KEY))
    client = daemon.client()
    client.sign("sandbox")
    path.rename(tmp_path / "audit.jsonl.1")
    daemon.signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while not (path.exists() and b"audit.reopened" in path.read_bytes()):
        assert time.monotonic() < deadline, "no audit.reopened in the new file"
        time.sleep(0.02)
    signed = client.sign("sandbox")
    old, new = audit_records(tmp_path / "audit.jsonl.1"), audit_records(path)
    assert ["audit.opened", "signature.issued"] == [r["event"] for r in old]
    assert (old[-1]["seq"] + 1, "audit.reopened") == (new[0]["seq"], new[0]["event"])
    issued = [r["signed_timestamp"] for r in new if r["event"] == "signature.issued"]
    assert [signed["timestamp"]] == issued


def test_sighup_with_a_fifo_at_the_audit_path_never_freezes_the_daemon(
    start_daemon, tmp_path: Path
) -> None:
    """The file moved and a FIFO put in its place: the reopen is refused and logged, signing
    goes on into the file already open, and SIGTERM still stops the daemon."""
    path = tmp_path / "audit.jsonl"
    daemon = start_daemon(file_config(sections=f'[audit]\npath = "{path}"\n'), files=key_file(KEY))
    path.rename(tmp_path / "audit.jsonl.1")
    os.mkfifo(path)
    daemon.signal(signal.SIGHUP)
    failed = daemon.wait_for_event("audit.reopen_failed")
    signed = daemon.client().sign("sandbox")
    recorded = [r.get("signed_timestamp") for r in audit_records(tmp_path / "audit.jsonl.1")]
    assert ("EINVAL", signed["timestamp"]) == (failed["reason"], recorded[-1])
    assert 0 == daemon.stop()


def audit_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidkeyd", "audit", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_audit_verify_follows_the_chain_across_a_restart_and_its_logged_checkpoint(
    start_daemon, tmp_path: Path
) -> None:
    """Two runs on one file form one chain (exit 0, the journal's checkpoint matches); an
    edited record makes it exit 1 naming the line."""
    path = tmp_path / "audit.jsonl"
    config = file_config(sections=f'[audit]\npath = "{path}"\n')
    for _run in range(2):
        daemon = start_daemon(config, files=key_file(KEY))
        daemon.client().sign("sandbox")
        assert 0 == daemon.stop()
    checkpoint = daemon.events("audit.checkpoint")[-1]
    clean = audit_cli(
        "verify", str(path), "--checkpoint", f"{checkpoint['seq']}:{checkpoint['chain']}"
    )
    assert (0, "ok: ") == (clean.returncode, clean.stdout[:4])
    assert [1, 2, 3, 4, 5, 6, 7, 8] == [r["seq"] for r in audit_records(path)]
    edited = tmp_path / "edited.jsonl"
    edited.write_text(
        path.read_text().replace('"environment":"sandbox"', '"environment":"prod"', 1)
    )
    broken = audit_cli("verify", str(edited))
    assert 1 == broken.returncode
    assert f"{edited}:2 (seq 2): modified" in broken.stdout


def test_audit_verify_names_a_file_spliced_from_two_daemons(start_daemon, tmp_path: Path) -> None:
    """Records of another daemon's trail pasted in: exit 1 at the first pasted record."""
    files = []
    for name in ("a", "b"):
        path = tmp_path / f"{name}.jsonl"
        daemon = start_daemon(
            file_config(sections=f'[audit]\npath = "{path}"\n'), files=key_file(KEY)
        )
        daemon.client().sign("sandbox")
        daemon.stop()
        files.append(path.read_text().splitlines(keepends=True))
    spliced = tmp_path / "spliced.jsonl"
    spliced.write_text("".join(files[0][:2] + files[1][2:]))
    result = audit_cli("verify", str(spliced))
    assert 1 == result.returncode
    assert f"{spliced}:3 (seq 3): modified" in result.stdout


def test_audit_query_answers_match_the_traffic_sent(start_daemon, tmp_path: Path) -> None:
    """Three signatures, two verifies, three refusals: the summary and the filters say so."""
    path = tmp_path / "audit.jsonl"
    daemon = start_daemon(file_config(sections=f'[audit]\npath = "{path}"\n'), files=key_file(KEY))
    client = daemon.client()
    signed = [client.sign("sandbox") for _ in range(3)]
    for answer in signed[:2]:
        client.verify("sandbox", answer["timestamp"], answer["signature"])
    for _ in range(2):
        with pytest.raises(RequestFailedError):
            client.sign("nowhere")
    daemon.raw(b"GET /nope HTTP/1.1\r\nConnection: close\r\n\r\n")
    daemon.stop()
    exe, version = os.path.realpath(sys.executable), signed[0]["key_version"]

    summary = json.loads(audit_cli("query", str(path), "--summary", "--json").stdout)
    assert [
        {
            "environment": "sandbox",
            "key_version": version,
            "peer_uid": os.getuid(),
            "peer_user": pwd.getpwuid(os.getuid()).pw_name,
            "peer_exe": exe,
            "count": 3,
        }
    ] == summary["signatures"]
    assert [
        {"reason": "unknown_environment", "count": 2},
        {"reason": "not_found", "count": 1},
    ] == summary["refusals"]
    verified = audit_cli(
        "query", str(path), "--event", "signature.verified", "--uid", str(os.getuid()), "--json"
    )
    assert 2 == len(verified.stdout.splitlines())
    assert "" == audit_cli("query", str(path), "--key-version", "other").stdout
    later = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert "" == audit_cli("query", str(path), "--since", later).stdout


def test_a_peer_executable_named_in_no_encoding_does_not_break_audit_query(
    start_daemon, tmp_path: Path
) -> None:
    """A peer runs a binary whose name is not UTF-8; its refusal is recorded, and `audit query`
    under a strict UTF-8 stdout (a UTF-8 locale other than C) prints the name escaped."""
    path = tmp_path / "audit.jsonl"
    daemon = start_daemon(file_config(sections=f'[audit]\npath = "{path}"\n'), files=key_file(KEY))
    peer = os.path.join(os.fsencode(tmp_path), b"peer\xff")
    shutil.copy(os.path.realpath(sys.executable), peer)
    request = b"GET /v1/nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    connect = (
        "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); "
        f"s.sendall({request!r}); s.recv(65536)"
    )
    subprocess.run(
        [peer, "-I", "-S", "-c", connect, str(daemon.socket_path)], check=True, timeout=30
    )
    daemon.wait_for_event("request.rejected")
    shown = subprocess.run(
        [
            sys.executable,
            "-m",
            "sidkeyd",
            "audit",
            "query",
            str(path),
            "--event",
            "request.rejected",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONIOENCODING": "utf-8:strict"},
    )
    assert (0, "peer\\udcff") == (shown.returncode, shown.stdout.split("/")[-1].strip()), (
        shown.stderr
    )


def test_a_trail_that_cannot_be_opened_stops_the_start_with_its_reason(tmp_path: Path) -> None:
    """No folder for the file: exit 3, daemon.failed says why, no socket is left behind."""
    daemon = Daemon.write_config(
        tmp_path,
        file_config(sections=f'[audit]\npath = "{tmp_path / "missing" / "audit.jsonl"}"\n'),
    )
    (tmp_path / "keys.toml").write_text(key_file(KEY)["keys.toml"])
    daemon.launch()
    assert daemon.process is not None
    assert 3 == daemon.process.wait(60)
    [failed] = daemon.events("daemon.failed")
    assert failed["reason"].startswith("FileNotFoundError")
    assert not daemon.socket_path.exists()


def test_on_audit_failure_continue_serves_on_a_closed_stdout_and_counts_the_loss(piped) -> None:
    """ "continue": the same closed stdout answers 200, health stays ok but says failing, and
    the metric counts each record lost."""
    daemon = piped(file_config(sections='[audit]\nstdout = true\non_audit_failure = "continue"\n'))
    daemon.close_stdout()
    client = daemon.client()
    assert 3 == len([client.sign("sandbox") for _ in range(3)])
    healthy, health = health_of(client)
    assert (True, {"status": "failing", "reason": "EPIPE"}) == (healthy, health["audit"])
    metrics = daemon.layout.raw(b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert b'sidkeyd_audit_write_failures_total{reason="EPIPE"} 3.0' in metrics
    client.close()
    assert 0 == daemon.terminate_within(PROMPT_S * 2)


# -- a file and stdout at once ------------------------------------------------------------


def both_config(path: Path, more: str = "") -> str:
    return file_config(sections=f'[audit]\npath = "{path}"\nstdout = true\n{more}')


def stdout_records(output: bytes) -> list[dict[str, object]]:
    """The records on stdout: JSON lines with a seq and no level (the log's checkpoint line)."""
    lines = [json.loads(line) for line in output.splitlines() if line.strip()]
    return [line for line in lines if "seq" in line and "level" not in line]


def test_a_file_and_stdout_carry_the_same_records_one_chain(piped, tmp_path: Path) -> None:
    """path and stdout = true: every record, seq and chain the same in the file and on the
    daemon's stdout (beside its log), and the file verifies."""
    path = tmp_path / "both.jsonl"
    daemon = piped(both_config(path))
    client = daemon.client()
    signed = []
    for stamp in unique_timestamps(3, 0):
        signed.append(client.sign("sandbox", stamp)["timestamp"])
        daemon.read_until(stamp.encode())  # read as it comes: the pipe holds one page
    client.close()
    daemon.process.send_signal(signal.SIGTERM)
    daemon.read_until(b'"daemon.stopped"')
    assert 0 == daemon.process.wait(PROMPT_S * 2)
    in_file = audit_records(path)
    assert in_file == stdout_records(daemon.output)
    assert signed == [r["signed_timestamp"] for r in in_file if r["event"] == "signature.issued"]
    assert 0 == audit_cli("verify", str(path)).returncode


def test_a_file_with_a_closed_stdout_refuses_and_voids_each_record_in_the_file(
    piped, tmp_path: Path
) -> None:
    """EPIPE on stdout: prompt 503 audit_unavailable, health names stdout, each signature's
    record in the file is followed by audit.voided naming it, and the file verifies."""
    path = tmp_path / "both.jsonl"
    daemon = piped(both_config(path))
    daemon.close_stdout()
    client = daemon.client()
    for _ in range(3):
        with pytest.raises(RequestFailedError) as caught:
            client.sign("sandbox")
        assert (503, "audit_unavailable") == (caught.value.status, caught.value.code)
    healthy, health = health_of(client)
    assert (False, {"status": "failing", "reason": "stdout:EPIPE"}) == (healthy, health["audit"])
    client.close()
    assert 0 == daemon.terminate_within(PROMPT_S * 2)
    records = audit_records(path)
    issued = [r["seq"] for r in records if r["event"] == "signature.issued"]
    voided = [r["voided_seq"] for r in records if r["event"] == "audit.voided"]
    assert (3, issued) == (len(issued), voided)
    assert 0 == audit_cli("verify", str(path)).returncode


def test_a_file_with_a_stdout_nobody_reads_refuses_promptly_and_stops_on_sigterm(
    piped, tmp_path: Path
) -> None:
    """A full pipe beside a healthy file: signs get 503 within the write timeout, health
    says stdout:sink_blocked, every delivered signature has its record in the file (the
    refused ones voided), the file verifies, and SIGTERM stops the daemon, pipe still full."""
    path = tmp_path / "both.jsonl"
    daemon = piped(both_config(path))
    client = daemon.client()
    delivered, refusals = sign_until_refused(client)
    assert ["audit_unavailable"] * 3 == refusals, "the pipe never filled"
    healthy, health = health_of(client)
    assert (False, "stdout:sink_blocked") == (healthy, health["audit"]["reason"])  # type: ignore[index]
    client.close()
    assert 0 == daemon.terminate_within(PROMPT_S * 2)
    records = audit_records(path)
    voided = {r["voided_seq"] for r in records if r["event"] == "audit.voided"}
    issued = [
        r["signed_timestamp"]
        for r in records
        if r["event"] == "signature.issued" and r["seq"] not in voided
    ]
    assert (delivered, 3) == (issued, len(voided))
    assert 0 == audit_cli("verify", str(path)).returncode


@pytest.mark.parametrize("tool", ["verify", "query"])
def test_audit_tools_refuse_a_fifo_or_a_device_instead_of_hanging(
    tool: str, tmp_path: Path
) -> None:
    """A FIFO (no writer) would block the open and /dev/zero never ends: each is refused at
    once, naming the path, exit 2 (as a file that cannot be read)."""
    fifo = tmp_path / "audit.jsonl"
    os.mkfifo(fifo)
    answers = [audit_cli(tool, str(path)) for path in (fifo, Path("/dev/zero"))]
    assert [(2, f"sidkeyd: {path}: not a regular file") for path in (fifo, "/dev/zero")] == [
        (done.returncode, done.stderr.strip()) for done in answers
    ]
