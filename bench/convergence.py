"""How long after a rotation in Secrets Manager does sidkeyd sign with the new key?

Starts moto_server and one daemon per trigger (each its own process on its own socket), then,
for each trigger, rotates the secret (PutSecretValue) again and again and measures the time
from the rotation to the first signature made with the new key:

- ``schedule``: nothing tells the daemon; its scheduled check (``interval``) finds the new
  version. Each rotation waits a random fraction of the interval first, so rotations land at
  random phases of the schedule, as real ones do.
- ``report``: a client signs, a fake Smile ID refuses the old key (401), the client reports
  it (``Client.send_signed``) and retries; the retry is the first new-key signature.
- ``notify``: the EventBridge event for the PutSecretValue is put on the SQS queue the daemon
  long-polls (``notify_queue_url``). AWS's own delivery delay (CloudTrail to EventBridge to
  SQS) is not in this figure.

Every new-key signature is checked against an HMAC computed here. Prints a markdown table.

    .venv/bin/python bench/convergence.py [--interval 2] [--schedule-n 10] [--n 20]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent / "tests"))

from sidkeyd.client import Client  # noqa: E402
from support.daemon import Daemon  # noqa: E402
from support.moto_server import (  # noqa: E402
    MotoEndpoint,
    change_event,
    fake_credentials,
    moto_server,
)

PARTNER_ID = "085"
POLL_S = 0.002  # how often the measuring client signs while waiting for the new key
DEADLINE_S = 30.0
REPORT_INTERVAL_S = 0.1  # the config's report_interval (default 5s) so rotations can be close
CONFIG = """
[server]
socket = "{socket}"

[refresh]
interval = "@INTERVAL@"
report_interval = "@REPORT_INTERVAL@"

[log]
format = "json"
level = "info"

[sources.aws]
type = "aws"
region = "us-east-1"
endpoint_url = "@ENDPOINT@"
max_attempts = 1
@SOURCE@

[environments.sandbox]
source = "aws"
secret = "@SECRET@"
"""


def fake_key(n: int) -> str:
    return f"FAKE-convergence-key-{n:04d}-not-real"


def expected_signature(key: str, timestamp: str) -> str:
    """Computed here, independently of sidkeyd.signing."""
    mac = hmac.new(key.encode(), f"{timestamp}{PARTNER_ID}sid_request".encode(), hashlib.sha256)
    return base64.b64encode(mac.digest()).decode()


@dataclass
class Rig:
    """One daemon on one secret; ``rotate()`` puts a new fake key and returns (version, key)."""

    name: str
    moto: MotoEndpoint
    secret: str
    daemon: Daemon
    client: Client
    queue: str | None = None
    counter: int = 0
    keys: list[str] = field(default_factory=list)

    def rotate(self) -> tuple[str, str]:
        self.counter += 1
        key = fake_key(self.counter + 1000 * len(self.name))
        self.keys.append(key)
        body = json.dumps({"api_key": key, "partner_id": PARTNER_ID})
        put = self.moto.client().put_secret_value(SecretId=self.secret, SecretString=body)
        return put["VersionId"], key


@contextmanager
def rig(
    name: str, moto: MotoEndpoint, folder: Path, interval: str, notify: bool = False
) -> Iterator[Rig]:
    secret = moto.secret_name(f"convergence-{name}")
    first = fake_key(1000 * len(name))
    moto.client().create_secret(
        Name=secret, SecretString=json.dumps({"api_key": first, "partner_id": PARTNER_ID})
    )
    queue = moto.queue() if notify else None
    config = (
        CONFIG.replace("@INTERVAL@", interval)
        .replace("@REPORT_INTERVAL@", f"{int(REPORT_INTERVAL_S * 1000)}ms")
        .replace("@ENDPOINT@", moto.url)
        .replace("@SECRET@", secret)
        .replace("@SOURCE@", f'notify_queue_url = "{queue}"' if queue else "")
    )
    (folder / name).mkdir()
    daemon = Daemon.start(folder / name, config)
    try:
        daemon.wait_for_event("key.loaded", environment="sandbox")
        client = daemon.client()
        rigged = Rig(name, moto, secret, daemon, client, queue, keys=[first])
        yield rigged
        daemon.assert_no_secret_in_logs(rigged.keys)
    finally:
        daemon.stop()


def first_new_signature(client: Client, version: str, key: str, started: float) -> float:
    """Sign until a signature names ``version``; check its HMAC; seconds since ``started``."""
    while True:
        signed = client.sign("sandbox")
        if signed["key_version"] == version:
            elapsed = time.monotonic() - started
            if signed["signature"] != expected_signature(key, signed["timestamp"]):
                raise SystemExit(f"signature for {version} is not the HMAC of its key")
            return elapsed
        if time.monotonic() - started > DEADLINE_S:
            raise SystemExit(f"no signature with {version} within {DEADLINE_S}s")
        time.sleep(POLL_S)


def measure_schedule(r: Rig, n: int, interval_s: float, rng: random.Random) -> list[float]:
    samples = []
    for _ in range(n):
        time.sleep(rng.uniform(0, interval_s))  # a random phase of the schedule
        started = time.monotonic()
        version, key = r.rotate()
        samples.append(first_new_signature(r.client, version, key, started))
    return samples


@dataclass
class FakeSmileId:
    """Accepts only signatures made with ``key``; notes when it first accepted one."""

    key: str
    started: float
    accepted: list[tuple[float, dict[str, Any]]] = field(default_factory=list)

    def __call__(self, signed: dict[str, Any]) -> int:
        good = expected_signature(self.key, signed["timestamp"])
        if not hmac.compare_digest(good, signed["signature"]):
            return 401
        self.accepted.append((time.monotonic() - self.started, signed))
        return 200


def measure_report(r: Rig, n: int) -> list[float]:
    samples = []
    for _ in range(n):
        time.sleep(REPORT_INTERVAL_S * 1.5)  # past the rate limit of report-forced checks
        started = time.monotonic()
        version, key = r.rotate()
        smile_id = FakeSmileId(key, started)
        status = r.client.send_signed("sandbox", smile_id, rejected=lambda s: s == 401)
        if status != 200 or not smile_id.accepted:
            raise SystemExit(f"the retry after the report was not signed with {version}")
        elapsed, signed = smile_id.accepted[0]
        if signed["key_version"] != version:
            raise SystemExit(f"Smile ID accepted a signature not named {version}")
        samples.append(elapsed)
    return samples


def measure_notify(r: Rig, n: int) -> list[float]:
    assert r.queue is not None
    sqs = r.moto.sqs()
    samples = []
    for _ in range(n):
        started = time.monotonic()
        version, key = r.rotate()
        sqs.send_message(QueueUrl=r.queue, MessageBody=json.dumps(change_event(r.secret)))
        samples.append(first_new_signature(r.client, version, key, started))
    return samples


def row(trigger: str, samples: list[float]) -> str:
    median = statistics.median(samples) * 1000
    worst = max(samples) * 1000
    return f"| {trigger} | {median:,.0f} ms | {worst:,.0f} ms | {len(samples)} |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--interval", type=float, default=2.0, help="schedule interval, seconds")
    parser.add_argument("--schedule-n", type=int, default=10, help="rotations for schedule")
    parser.add_argument("--n", type=int, default=20, help="rotations for report and notify")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    begun = time.monotonic()
    results: dict[str, list[float]] = {}
    with ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sidkeyd-conv-")))
        stack.enter_context(fake_credentials())
        moto = stack.enter_context(moto_server(folder / "moto_server.log"))
        interval = f"{int(args.interval * 1000)}ms"
        steps: list[tuple[str, Callable[[], list[float]]]] = []
        scheduled = stack.enter_context(rig("schedule", moto, folder, interval))
        reporting = stack.enter_context(rig("report", moto, folder, "24h"))
        notified = stack.enter_context(rig("notify", moto, folder, "24h", notify=True))
        steps = [
            ("schedule", lambda: measure_schedule(scheduled, args.schedule_n, args.interval, rng)),
            ("report", lambda: measure_report(reporting, args.n)),
            ("notify", lambda: measure_notify(notified, args.n)),
        ]
        for trigger, measure in steps:
            results[trigger] = measure()
    total = time.monotonic() - begun
    print(f"Rotation to first new-key signature (moto_server on loopback, {platform.machine()},")
    print(f"Python {platform.python_version()}, schedule interval {args.interval:g}s with the")
    print(f"default 10% jitter; {total:.0f}s in all)\n")
    print("| trigger | median | max | n |")
    print("|---|---:|---:|---:|")
    for trigger, samples in results.items():
        print(row(trigger, samples))
    return 0


if __name__ == "__main__":
    sys.exit(main())
