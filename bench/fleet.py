"""How long after a rotation does every host of a fleet sign with the new key?

Starts moto_server and N daemons as separate hosts: each in its own UTS namespace with its own
host name (``unshare --uts``, then ``hostname host-07``; checked with ``nsenter``), its own
socket, and, in notify mode, its own SQS queue. Every queue is subscribed to one SNS topic
(the fan-out docs/sources/aws.md recommends), so one published event reaches every host, as
an SNS envelope. The whole fleet reads one secret.

Two modes, one fleet each, one after the other:

- ``schedule``: no queue; the scheduled check (``--interval``, default 10% jitter, a per-host
  offset from the host name) finds the new version. Each rotation waits a random fraction of
  the interval first, so rotations land at random phases of the schedule.
- ``notify``: the same schedule plus a queue per host; each rotation's EventBridge-shaped
  change event is published to the topic right after the PutSecretValue.

A rotation is converged when every host's ``/v1/status`` names the new version; each host
then signs once, and that signature must name the new version and be the HMAC of the new key
computed here. Convergence is measured from just before the PutSecretValue, polling each
host's status from its own thread.

Backend calls are counted on the wire: each host's Secrets Manager endpoint and queue URL
point at its own counting HTTP front to moto, which records every operation. The steady rate
(calls per host per hour) is measured in an idle window with no rotation (``--idle``); the
calls a rotation adds are counted over the rotations.

Prints a markdown table. Needs root (UTS namespaces), ``unshare`` and ``nsenter``.

    .venv/bin/python bench/fleet.py [--n 20] [--rotations 10] [--interval 30] [--idle 60]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent / "tests"))

from sidkeyd.client import Client  # noqa: E402
from sidkeyd.errors import DaemonUnavailableError, RequestFailedError  # noqa: E402
from support.daemon import Daemon  # noqa: E402
from support.moto_server import (  # noqa: E402
    MotoEndpoint,
    change_event,
    fake_credentials,
    moto_server,
    relay,
)

PARTNER_ID = "085"
ENVIRONMENT = "sandbox"
READY_DEADLINE_S = 120.0  # 20 daemons importing boto3 on 2 cores take a while
POLL_S = {"schedule": 0.1, "notify": 0.02}  # how often each host's status is read
PERIODIC = ("DescribeSecret", "ReceiveMessage")  # the calls a host makes with no rotation
CONFIG = """
[server]
socket = "{socket}"

[refresh]
interval = "@INTERVAL@"

[log]
format = "json"
level = "warning"

[sources.aws]
type = "aws"
region = "us-east-1"
endpoint_url = "@ENDPOINT@"
max_attempts = 1
@QUEUE@

[environments.sandbox]
source = "aws"
secret = "@SECRET@"
"""


def fake_key(n: int) -> str:
    return f"FAKE-fleet-key-{n:04d}-not-real"


def expected_signature(key: str, timestamp: str) -> str:
    """Computed here, independently of sidkeyd.signing."""
    mac = hmac.new(key.encode(), f"{timestamp}{PARTNER_ID}sid_request".encode(), hashlib.sha256)
    return base64.b64encode(mac.digest()).decode()


class HostDaemon(Daemon):
    """A daemon started in a UTS namespace of its own, under ``hostname``."""

    hostname = ""

    def launch(self, *, env: dict[str, str] | None = None) -> None:
        command = [
            "unshare", "--uts", "--", "sh", "-c", 'hostname "$1" && shift && exec "$@"', "sh",
            self.hostname, sys.executable, "-m", "sidkeyd", "serve", "-c", str(self.config_path),
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)

    def namespace_hostname(self) -> str:
        """The host name the daemon's process sees, read from inside its UTS namespace."""
        assert self.process is not None
        return subprocess.run(
            ["nsenter", "--target", str(self.process.pid), "--uts", "hostname"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip


@dataclass
class CountingFront:
    """One host's HTTP front to moto: forwards every request and records its operation."""

    url: str
    operations: list[str] = field(default_factory=list)  # e.g. "secretsmanager.DescribeSecret"


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a long poll cut short at teardown: nothing to report


@contextmanager
def counting_front(upstream: str) -> Iterator[CountingFront]:
    origin = urlsplit(upstream)

    class Forward(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            front.operations.append(self.headers.get("X-Amz-Target", "unknown"))
            relay(self, origin.hostname or "", origin.port or 80, body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = _QuietServer(("127.0.0.1", 0), Forward)
    front = CountingFront(url=f"http://127.0.0.1:{server.server_address[1]}")
    thread = threading.Thread(target=server.serve_forever, name="fleet-front", daemon=True)
    thread.start()
    try:
        yield front
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@dataclass
class Host:
    name: str
    daemon: HostDaemon
    front: CountingFront
    client: Client
    queue_url: str | None = None


@dataclass
class Fleet:
    """One secret, one SNS topic, N hosts; ``rotate()`` puts a new key and returns it."""

    moto: MotoEndpoint
    secret: str
    hosts: list[Host]
    topic_arn: str | None
    keys: list[str] = field(default_factory=list)
    # Built once: a boto3 client costs tens of milliseconds, which would count as convergence.
    secrets: Any = None
    topics: Any = None

    def rotate(self) -> tuple[str, str]:
        key = fake_key(len(self.keys))
        self.keys.append(key)
        body = json.dumps({"api_key": key, "partner_id": PARTNER_ID})
        version = self.secrets.put_secret_value(SecretId=self.secret, SecretString=body)
        if self.topic_arn is not None:
            self.topics.publish(
                TopicArn=self.topic_arn, Message=json.dumps(change_event(self.secret))
            )
        return version["VersionId"], key

    def operations(self) -> Counter[str]:
        """Every backend operation the hosts' fronts saw, by name (``DescribeSecret``...)."""
        seen: Counter[str] = Counter()
        for host in self.hosts:
            seen.update(target.rsplit(".", 1)[-1] for target in list(host.front.operations))
        return seen

    def reset_counts(self) -> None:
        for host in self.hosts:
            host.front.operations.clear()


def sns(moto: MotoEndpoint) -> Any:
    return boto3.client(
        "sns",
        region_name=moto.region,
        endpoint_url=moto.url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def subscribed_queue(moto: MotoEndpoint, topic_arn: str, name: str, front: CountingFront) -> str:
    """A new queue subscribed to the topic; its URL, on the host's front."""
    queue_url = moto.queue(prefix=f"sidkeyd-fleet-{name}")
    queue_arn = moto.sqs().get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])
    sns(moto).subscribe(
        TopicArn=topic_arn, Protocol="sqs", Endpoint=queue_arn["Attributes"]["QueueArn"]
    )
    return front.url + urlsplit(queue_url).path


def wait_until_serving(host: Host) -> str:
    """Poll the host's status until it holds a key (no log line at level warning says so)."""
    deadline = time.monotonic() + READY_DEADLINE_S
    while True:
        process = host.daemon.process
        if process is not None and process.poll() is not None:
            lines = "\n".join(host.daemon.log_lines()[-20:])
            raise SystemExit(f"{host.name} exited ({process.returncode}):\n{lines}")
        try:
            version = host.client.status()["environments"][ENVIRONMENT]["key_version"]
            if version:
                return str(version)
        except (DaemonUnavailableError, RequestFailedError):
            pass  # not listening yet, or still starting
        if time.monotonic() > deadline:
            raise SystemExit(f"{host.name} held no key within {READY_DEADLINE_S}s")
        time.sleep(0.1)  # polling interval of a bounded wait


@contextmanager
def fleet(
    moto: MotoEndpoint, folder: Path, n: int, interval_s: float, notify: bool
) -> Iterator[Fleet]:
    mode = "notify" if notify else "schedule"
    secret = moto.secret_name(f"fleet-{mode}")
    first = fake_key(0)
    moto.client().create_secret(
        Name=secret, SecretString=json.dumps({"api_key": first, "partner_id": PARTNER_ID})
    )
    topic_arn = (
        sns(moto).create_topic(Name=f"secrets-changed-{mode}")["TopicArn"] if notify else None
    )
    built = Fleet(moto, secret, [], topic_arn, [first], moto.client(), sns(moto))
    with ExitStack() as stack:
        for index in range(1, n + 1):
            name = f"host-{index:02d}"
            front = stack.enter_context(counting_front(moto.url))
            queue_url = subscribed_queue(moto, topic_arn, name, front) if topic_arn else None
            config = (
                CONFIG.replace("@INTERVAL@", f"{int(interval_s * 1000)}ms")
                .replace("@ENDPOINT@", front.url)
                .replace("@SECRET@", secret)
                .replace("@QUEUE@", f'notify_queue_url = "{queue_url}"' if queue_url else "")
            )
            (folder / mode / name).mkdir(parents=True)
            daemon = HostDaemon.write_config(folder / mode / name, config)
            daemon.hostname = name
            stack.callback(daemon.stop)
            daemon.launch()
            built.hosts.append(Host(name, daemon, front, daemon.client(), queue_url))
        for host in built.hosts:
            wait_until_serving(host)
            seen = host.daemon.namespace_hostname()
            if seen != host.name:
                raise SystemExit(f"{host.name}'s daemon sees host name {seen!r}")
        yield built
        for host in built.hosts:
            host.daemon.assert_no_secret_in_logs(built.keys)


def converge(
    host: Host, version: str, key: str, started: float, poll_s: float, deadline_s: float
) -> float:
    """Seconds from ``started`` until the host's status names ``version``; then one signature
    must name it too and be the HMAC of ``key``."""
    while True:
        status = host.client.status()["environments"][ENVIRONMENT]
        if status["key_version"] == version:
            elapsed = time.monotonic() - started
            signed = host.client.sign(ENVIRONMENT)
            if signed["key_version"] != version:
                raise SystemExit(f"{host.name}: status names {version}, a signature does not")
            if signed["signature"] != expected_signature(key, signed["timestamp"]):
                raise SystemExit(f"{host.name}: the signature is not the HMAC of {version}'s key")
            return elapsed
        if time.monotonic() - started > deadline_s:
            raise SystemExit(f"{host.name}: no {version} within {deadline_s:.0f}s")
        time.sleep(poll_s)


@dataclass
class Result:
    mode: str
    fleet_s: list[float] = field(default_factory=list)  # per rotation: until every host
    host_s: list[float] = field(default_factory=list)  # per rotation and host
    idle_calls: Counter[str] = field(default_factory=Counter)
    idle_s: float = 0.0
    rotation_calls: Counter[str] = field(default_factory=Counter)
    hosts: int = 0


def measure(
    built: Fleet, mode: str, rotations: int, interval_s: float, idle_s: float, rng: random.Random
) -> Result:
    result = Result(mode, hosts=len(built.hosts))
    built.reset_counts()
    begun = time.monotonic()
    time.sleep(idle_s)  # the idle window: only periodic calls
    result.idle_s = time.monotonic() - begun
    result.idle_calls = built.operations()
    built.reset_counts()
    deadline_s = interval_s * 1.1 + 30.0
    with ThreadPoolExecutor(max_workers=len(built.hosts)) as pool:
        for _ in range(rotations):
            gap = interval_s if mode == "schedule" else 2.0
            time.sleep(rng.uniform(0, gap))  # a random phase of the schedule
            started = time.monotonic()
            version, key = built.rotate()
            waits = [
                pool.submit(converge, host, version, key, started, POLL_S[mode], deadline_s)
                for host in built.hosts
            ]
            per_host = [wait.result() for wait in waits]
            result.host_s.extend(per_host)
            result.fleet_s.append(max(per_host))
    result.rotation_calls = built.operations()
    return result


def quantile(samples: list[float], q: float) -> float:
    """Nearest-rank quantile: a value that was observed (with 10 samples, p95 is the max)."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def seconds(value: float) -> str:
    return f"{value * 1000:,.0f} ms" if value < 10 else f"{value:,.1f} s"


def table(results: list[Result], rotations: int) -> list[str]:
    lines = [
        "| mode | converged | every host p50 | p95 | max | one host p50 "
        "| calls/host/hour (idle) | calls/host/rotation |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in results:
        hours = r.idle_s / 3600
        idle = {op: count / r.hosts / hours for op, count in sorted(r.idle_calls.items())}
        idle_text = ", ".join(f"{op} {rate:,.0f}" for op, rate in idle.items()) or "none"
        total = sum(idle.values())
        rotation = {
            op: count / r.hosts / rotations
            for op, count in sorted(r.rotation_calls.items())
            if op not in PERIODIC
        }
        rotation_text = ", ".join(f"{op} {rate:.1f}" for op, rate in rotation.items())
        lines.append(
            f"| {r.mode} | {len(r.host_s)}/{r.hosts * rotations} "
            f"| {seconds(statistics.median(r.fleet_s))} "
            f"| {seconds(quantile(r.fleet_s, 0.95))} | {seconds(max(r.fleet_s))} "
            f"| {seconds(statistics.median(r.host_s))} | **{total:,.0f}**: {idle_text} "
            f"| {rotation_text} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20, help="hosts (daemons) per mode")
    parser.add_argument("--rotations", type=int, default=10, help="rotations per mode")
    parser.add_argument("--interval", type=float, default=30.0, help="schedule interval, s")
    parser.add_argument("--idle", type=float, default=None, help="idle window, s (4 intervals)")
    parser.add_argument("--modes", default="schedule,notify", help="comma-separated")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    idle_s = args.idle if args.idle is not None else 4 * args.interval
    rng = random.Random(args.seed)
    began = datetime.now(UTC)
    started = time.monotonic()
    results = []
    with ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sidkeyd-fleet-")))
        stack.enter_context(fake_credentials())
        moto = stack.enter_context(moto_server(folder / "moto_server.log"))
        for mode in args.modes.split(","):
            with fleet(moto, folder, args.n, args.interval, notify=mode == "notify") as built:
                results.append(measure(built, mode, args.rotations, args.interval, idle_s, rng))
    total = time.monotonic() - started
    print(
        f"Fleet rotation convergence: N = {args.n} hosts per mode, {args.rotations} rotations "
        f"per mode, schedule interval {args.interval:g}s (jitter 0.1), idle window "
        f"{idle_s:g}s; moto_server on loopback, {platform.machine()}, "
        f"{len(os.sched_getaffinity(0))} cores, Python {platform.python_version()}, "
        f"{began:%Y-%m-%d %H:%M} UTC, {total:.0f}s in all\n"
    )
    print("\n".join(table(results, args.rotations)))
    for r in results:
        every = ", ".join(seconds(value) for value in sorted(r.fleet_s))
        print(f"\n{r.mode}, every host, per rotation (sorted): {every}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
