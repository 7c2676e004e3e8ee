"""Benchmark sidkeyd's sign path against baselines measured in the same run.

Builds bench/loadgen.c, starts every server (baselines and the real daemon, each its own
process on its own Unix socket), then measures them in interleaved rounds so that drift on a
noisy machine hits all of them alike. Prints a markdown table; exits 1 if any request failed.

    .venv/bin/python bench/run.py [--duration 5] [--warmup 1] [--rounds 2] [--connections 32]
    .venv/bin/python bench/run.py --compare before=/tmp/sidkeyd-base/src   # another tree too
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REQUEST_BODY = '{"environment":"sandbox"}'
CLOCK_TICK_S = 1 / os.sysconf("SC_CLK_TCK")
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
FAKE_KEYS = """\
# Fake keys for the benchmark only.
["smileid/sandbox"]
api_key = "FAKE-bench-key-not-real-000000000000"
partner_id = "085"
"""
DAEMON_CONFIG = """\
[server]
socket = "{socket}"
max_connections = 1024

[log]
format = "json"
level = "{level}"

[sources.local]
type = "file"
path = "{keys}"

[environments.sandbox]
source = "local"
secret = "smileid/sandbox"

[environments.sandbox.allow]  # as production should be: the policy check is on the hot path
uids = [{uid}]
"""


@dataclass
class Target:
    name: str
    argv: list[str]
    socket: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None
    audited: bool = False  # its log must hold one audit line per signature
    audit_file: Path | None = None  # [audit] path: the records are counted there instead
    method: str = "POST"
    path: str = "/v1/sign"
    body: str = REQUEST_BODY  # what the request sends (bench/signers.py varies it)
    helper: subprocess.Popen[bytes] | None = None  # the OpenBao server behind its agent
    env: dict[str, str] | None = None  # e.g. PYTHONPATH for a tree to compare with
    body_bytes: int = 0
    runs: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Options:
    duration: float
    warmup: float
    rounds: int
    connections: int
    keep: bool
    json_out: Path | None
    compare: tuple[tuple[str, Path], ...] = ()  # (label, src folder) of other trees to measure


def parse_args() -> Options:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured per run")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before each run")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (median)")
    parser.add_argument("--connections", type=int, default=32, help="keep-alive connections")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder and logs")
    parser.add_argument("--json", type=Path, dest="json_out", help="also write raw results")
    parser.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="LABEL=SRC",
        help="also measure the daemon from another source tree (its src/ folder), audit on, "
        "in the same interleaved rounds: e.g. before=/tmp/base/src",
    )
    a = parser.parse_args()
    if a.duration <= 0 or a.warmup < 0 or a.rounds < 1 or a.connections < 1:
        parser.error("durations must be positive, rounds and connections at least 1")
    compare = []
    for item in a.compare:
        label, _, src = item.partition("=")
        if not label or not src or not (Path(src) / "sidkeyd" / "__init__.py").exists():
            parser.error(f"--compare {item!r}: want LABEL=SRC with SRC/sidkeyd/__init__.py")
        compare.append((label, Path(src).resolve()))
    return Options(
        a.duration, a.warmup, a.rounds, a.connections, a.keep, a.json_out, tuple(compare)
    )


# -- setup -------------------------------------------------------------------------------


def build_loadgen(folder: Path) -> Path:
    binary = folder / "loadgen"
    cc = os.environ.get("CC", "cc")
    subprocess.run([cc, "-O2", "-o", str(binary), str(BENCH / "loadgen.c")], check=True)
    return binary


def make_targets(folder: Path, compare: tuple[tuple[str, Path], ...] = ()) -> list[Target]:
    keys = folder / "keys.toml"
    keys.write_text(FAKE_KEYS)
    targets = [
        baseline_target(folder, "static", "baseline: uvloop+httptools, fixed body"),
        baseline_target(folder, "hmac", "baseline + JSON parse + HMAC"),
    ]
    audit = '\n[audit]\npath = "{path}"\nfsync = "{fsync}"\n'
    for name, level, extra, label in (
        ("info", "info", "", "sidkeyd, no [audit]: signature lines in the log (info)"),
        ("warning", "warning", "", "sidkeyd, unaudited (log warning)"),
        ("audit", "info", audit, "sidkeyd, [audit] file, fsync interval"),
        ("always", "info", audit, "sidkeyd, [audit] file, fsync always"),
        ("nometrics", "info", audit, "sidkeyd, [audit] file, metrics off"),
    ):
        sock = folder / f"sidkeyd-{name}.sock"
        config = folder / f"sidkeyd-{name}.toml"
        text = DAEMON_CONFIG.format(socket=sock, level=level, keys=keys, uid=os.getuid())
        audit_file = folder / f"audit-{name}.jsonl" if extra else None
        fsync = "always" if name == "always" else "interval"
        extra = extra.format(path=audit_file, fsync=fsync)
        if name == "nometrics":
            extra += "\n[metrics]\nenabled = false\n"
        config.write_text(text + extra)
        argv = [sys.executable, "-m", "sidkeyd", "serve", "-c", str(config)]
        log = folder / f"sidkeyd-{name}.log"
        audited = level == "info"
        targets.append(Target(label, argv, sock, log, audited=audited, audit_file=audit_file))
    for name, src in compare:
        sock = folder / f"sidkeyd-{name}.sock"
        config = folder / f"sidkeyd-{name}.toml"
        config.write_text(
            DAEMON_CONFIG.format(socket=sock, level="info", keys=keys, uid=os.getuid())
        )
        argv = [sys.executable, "-m", "sidkeyd", "serve", "-c", str(config)]
        env = {**os.environ, "PYTHONPATH": str(src)}
        log = folder / f"sidkeyd-{name}.log"
        label = f"sidkeyd {name} ({src.parent.name}), audit log on"
        targets.append(Target(label, argv, sock, log, audited=True, env=env))
    return targets


def baseline_target(folder: Path, mode: str, label: str) -> Target:
    sock = folder / f"{mode}.sock"
    argv = [sys.executable, str(BENCH / "baseline_server.py"), "--socket", str(sock)]
    return Target(label, [*argv, "--mode", mode], sock, folder / f"{mode}.log")


def start(target: Target) -> None:
    # Logs go to a file: the audit log's write per signature is part of the real cost.
    with target.log.open("wb") as log:
        target.process = subprocess.Popen(
            target.argv, stdout=log, stderr=subprocess.STDOUT, env=target.env
        )


def wait_ready(target: Target) -> None:
    """Poll until the socket accepts a connection, bounded; fail fast if the process died."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        assert target.process is not None
        if target.process.poll() is not None:
            raise RuntimeError(f"{target.name} exited:\n{tail(target.log)}")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.connect(str(target.socket))
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{target.name} not ready in {READY_TIMEOUT_S}s:\n{tail(target.log)}")


def probe(target: Target) -> None:
    """One real request: the server must answer 200 before it is measured."""
    request = (
        f"{target.method} {target.path} HTTP/1.1\r\nHost: localhost\r\n"
        f"Content-Type: application/json\r\n"
        f"Content-Length: {len(target.body)}\r\n\r\n{target.body}"
    ).encode()
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(target.socket))
            sock.sendall(request)
            head, body = read_response(sock)
        # The daemon serves during its first key checks, answering 503 "starting": wait them out.
        if b'"starting"' in body and time.monotonic() < deadline:
            time.sleep(0.05)
            continue
        break
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"{target.name} answered {head[:40]!r}")
    target.body_bytes = len(body)


def read_response(sock: socket.socket) -> tuple[bytes, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        data += recv(sock)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += recv(sock)
    return head, body


def recv(sock: socket.socket) -> bytes:
    chunk = sock.recv(65536)
    if not chunk:
        raise RuntimeError("the server closed the connection mid-response")
    return chunk


def stop(target: Target) -> None:
    for process in (target.process, target.helper):
        if process is None or process.poll() is not None:
            continue
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# -- the OpenBao agent (optional: when the bao binary is installed) ------------------------

OPENBAO_TOKEN = "bench-root-token"
OPENBAO_AGENT = """\
log_level = "warn"
vault {{ address = "{address}" }}
auto_auth {{
  method "token_file" {{
    config = {{ token_file_path = "{token_file}" }}
  }}
}}
api_proxy {{ use_auto_auth_token = "force" }}
listener "unix" {{
  address = "{socket}"
  tls_disable = true
}}
"""


def openbao_target(folder: Path) -> Target | None:
    """An OpenBao agent answering a KV v2 read on its Unix listener (each read forwarded to a
    dev server, whose CPU is counted with the agent's); None without the bao binary."""
    bao = shutil.which("bao") or str(Path(sys.executable).with_name("bao"))
    if not Path(bao).exists():
        return None
    with socket.socket() as probe_port:
        probe_port.bind(("127.0.0.1", 0))
        port = probe_port.getsockname()[1]
    address = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    env["HOME"] = str(folder)  # the dev server must not touch the real ~/.vault-token
    server_log = folder / "openbao-server.log"
    with server_log.open("wb") as log:
        server = subprocess.Popen(
            [bao, "server", "-dev", "-dev-no-store-token", f"-dev-root-token-id={OPENBAO_TOKEN}",
             f"-dev-listen-address=127.0.0.1:{port}", "-log-level=warn"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=folder,
        )  # fmt: skip
    try:
        _put_secret(address, server, server_log)
    except BaseException:
        server.kill()
        server.wait()
        raise
    token_file = folder / "openbao-token"
    token_file.write_text(OPENBAO_TOKEN)
    sock = folder / "openbao-agent.sock"
    config = folder / "openbao-agent.hcl"
    config.write_text(OPENBAO_AGENT.format(address=address, token_file=token_file, socket=sock))
    target = Target(
        "OpenBao agent, KV v2 read (agent + server CPU)",
        [bao, "agent", "-config", str(config)],
        sock,
        folder / "openbao-agent.log",
        env=env,
        method="GET",
        path="/v1/secret/data/sidkeyd",
        body="",
    )
    target.helper = server
    return target


def _put_secret(address: str, server: subprocess.Popen[bytes], log: Path) -> None:
    """Write the fake key once the dev server answers (bounded)."""
    request = urllib.request.Request(
        f"{address}/v1/secret/data/sidkeyd",
        data=json.dumps({"data": {"api_key": "FAKE-bench-key-not-real"}}).encode(),
        headers={"X-Vault-Token": OPENBAO_TOKEN},
        method="POST",
    )
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        try:
            with urllib.request.urlopen(request, timeout=5):
                return
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the OpenBao dev server did not start:\n{tail(log)}") from None
            time.sleep(0.1)


def tail(path: Path, lines: int = 20) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# -- measuring ---------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (all threads), from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may hold spaces
    return (int(fields[11]) + int(fields[12])) * CLOCK_TICK_S


def busy_seconds() -> float:
    """CPU time all processes used on all CPUs, from the first line of /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait; guest time is already counted in user
    return (sum(fields[:8]) - idle) * CLOCK_TICK_S


def loadgen(binary: Path, target: Target, seconds: float, connections: int) -> dict[str, Any]:
    argv = [str(binary), "-s", str(target.socket), "-c", str(connections), "-d", str(seconds)]
    argv += ["-m", target.method, "-p", target.path, "-b", target.body]
    # loadgen bounds itself (duration + 5 s grace); the timeout is a last resort.
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, check=False)
    if not done.stdout.strip():
        raise RuntimeError(f"loadgen failed on {target.name}: {done.stderr.strip()}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def server_cpu_seconds(target: Target) -> float:
    """The server's CPU; an OpenBao agent's with the OpenBao server it forwards each read to."""
    assert target.process is not None
    helper = 0.0 if target.helper is None else cpu_seconds(target.helper.pid)
    return cpu_seconds(target.process.pid) + helper


def measure(binary: Path, target: Target, opts: Options) -> dict[str, Any]:
    assert target.process is not None
    if opts.warmup > 0:
        loadgen(binary, target, opts.warmup, opts.connections)
    before, busy_before = server_cpu_seconds(target), busy_seconds()
    result = loadgen(binary, target, opts.duration, opts.connections)
    result["server_cpu_s"] = server_cpu_seconds(target) - before
    # Whatever else ran meanwhile: the noise this figure suffered on a shared machine.
    other = busy_seconds() - busy_before - result["server_cpu_s"] - result["client_cpu_s"]
    result["other_cpu_s"] = max(0.0, other)
    target.runs.append(result)
    return result


# -- reporting ---------------------------------------------------------------------------


def summary(target: Target) -> dict[str, float]:
    """The median of each figure over the rounds."""
    runs = target.runs

    def med(key: str) -> float:
        return statistics.median(float(run[key]) for run in runs)

    return {
        "rps": med("rps"),
        "rps_min": min(float(run["rps"]) for run in runs),
        "rps_max": max(float(run["rps"]) for run in runs),
        "p50_ms": med("p50_ms"),
        "p99_ms": med("p99_ms"),
        "cpu_us": statistics.median(
            run["server_cpu_s"] / run["requests"] * 1e6 if run["requests"] else 0.0 for run in runs
        ),
        "server_cpu_pct": statistics.median(100 * r["server_cpu_s"] / r["seconds"] for r in runs),
        "client_cpu_pct": statistics.median(100 * r["client_cpu_s"] / r["seconds"] for r in runs),
        "other_cpu_pct": statistics.median(100 * r["other_cpu_s"] / r["seconds"] for r in runs),
        "errors": sum(int(run["errors"]) for run in runs),
    }


COLUMNS = (
    "server", "req/s (range)", "vs baseline", "p50 ms", "p99 ms", "CPU µs/req", "vs baseline",
    "server CPU", "loadgen CPU", "other CPU", "body B", "errors",
)  # fmt: skip


def table(targets: list[Target]) -> str:
    rows = ["| " + " | ".join(COLUMNS) + " |", "|---" + "|---:" * (len(COLUMNS) - 1) + "|"]
    base = summary(targets[0])
    for target in targets:
        s = summary(target)
        cells = [
            target.name,
            f"{s['rps']:,.0f} ({s['rps_min']:,.0f}-{s['rps_max']:,.0f})",
            f"{s['rps'] / base['rps']:.2f}",
            f"{s['p50_ms']:.3f}",
            f"{s['p99_ms']:.3f}",
            f"{s['cpu_us']:.1f}",
            f"{s['cpu_us'] / base['cpu_us']:.2f}",
            f"{s['server_cpu_pct']:.0f}%",
            f"{s['client_cpu_pct']:.0f}%",
            f"{s['other_cpu_pct']:.0f}%",
            str(target.body_bytes),
            f"{s['errors']:.0f}",
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def machine() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return (
        f"{os.cpu_count()} CPUs ({model}), Linux {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def audit_lines(target: Target) -> int:
    with (target.audit_file or target.log).open("rb") as log:
        return sum(1 for line in log if b'"signature.issued"' in line)


def report(targets: list[Target], opts: Options) -> None:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = Path("/proc/loadavg").read_text().split()[0]
    print(f"\n{now}; {machine()}; load average {load} at the end")
    print(
        f"{opts.connections} keep-alive connections, 1 request in flight each, POST /v1/sign; "
        f"{opts.rounds} interleaved round(s) of {opts.warmup:g} s warm-up + "
        f"{opts.duration:g} s measured; medians, req/s range over the rounds.\n"
    )
    print(table(targets))
    for target in (t for t in targets if t.audited):
        print(f"\naudit lines written by '{target.name}': {audit_lines(target):,}")
    unaudited = next(t for t in targets if t.name.startswith("sidkeyd, unaudited"))
    for target in (t for t in targets if t.audit_file is not None):
        audited, bare = summary(target), summary(unaudited)
        print(
            f"'{target.name}' / unaudited: {audited['rps'] / bare['rps']:.2f}x the req/s, "
            f"{bare['cpu_us'] / audited['cpu_us']:.2f}x by CPU per signature (+"
            f"{audited['cpu_us'] - bare['cpu_us']:.1f} µs); the goal is at least 0.8x"
        )


def write_json(path: Path, targets: list[Target]) -> None:
    data = {t.name: {"body_bytes": t.body_bytes, "runs": t.runs} for t in targets}
    path.write_text(json.dumps(data, indent=2) + "\n")


# -- main --------------------------------------------------------------------------------


def run(opts: Options, folder: Path) -> int:
    binary = build_loadgen(folder)
    targets = make_targets(folder, opts.compare)
    try:
        agent = openbao_target(folder)
        if agent is not None:
            targets.append(agent)
        else:
            print("no bao binary: the OpenBao agent is not measured", file=sys.stderr)
        for target in targets:
            start(target)
        for target in targets:
            wait_ready(target)
            probe(target)
        for round_no in range(1, opts.rounds + 1):
            for target in targets:
                result = measure(binary, target, opts)
                print(
                    f"round {round_no}: {target.name}: {result['rps']:,.0f} req/s, "
                    f"{result['errors']} errors",
                    file=sys.stderr,
                )
    finally:
        for target in targets:
            stop(target)
    report(targets, opts)
    if opts.json_out is not None:
        write_json(opts.json_out, targets)
    return 1 if any(summary(t)["errors"] for t in targets) else 0


def main() -> int:
    opts = parse_args()
    # Short path: AF_UNIX socket paths are limited to ~107 bytes.
    folder = Path(tempfile.mkdtemp(prefix="sidkeyd-bench-", dir="/tmp"))
    try:
        return run(opts, folder)
    finally:
        if opts.keep:
            print(f"kept {folder}", file=sys.stderr)
        else:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
