"""Local key vs presigned vs live remote signing, measured in one run.

Starts ``bao server -dev`` (the suite's harness), imports a fake key into Transit with the code
``sidkeyd import-key --transit`` uses, and three daemons, each its own process and socket:

1. **local key**: the file source, the key in memory (today's default);
2. **transit, presigned**: ``signer = "transit"``, requests without a timestamp, answered from
   the presigned table (no network call);
3. **transit, live**: the same signer, every request with its own timestamp: one Transit call
   each, in the signing pool (8 threads).

The three are measured in interleaved rounds with bench/run.py's load generator and table;
afterwards the Transit HMAC calls each remote daemon made are counted from their logs (the
presigned one: its refills; the live one: one per signature).

    .venv/bin/python bench/signers.py [--duration 5] [--warmup 1] [--rounds 2] [--connections 32]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent / "tests"))

import run as bench  # noqa: E402  (bench/run.py: the load generator, measuring, the table)

from sidkeyd.config import EnvironmentConfig, VaultAuthConfig, VaultSourceConfig  # noqa: E402
from sidkeyd.keystore import ApiKey  # noqa: E402
from sidkeyd.sources.vault.byok import import_transit_key  # noqa: E402
from support.openbao_server import OpenBao  # noqa: E402

FAKE_KEY = "FAKE-bench-key-not-real-000000000000"  # bench/run.py's, 36 bytes: Transit takes it
TRANSIT_CONFIG = """\
[server]
socket = "{socket}"
max_connections = 1024
timestamp_skew = "1h"  # one fixed caller timestamp for the whole run

[log]
format = "json"
level = "info"

[sources.bao]
type = "vault"
url = "{url}"

[sources.bao.auth]
method = "token"
token_file = "{token}"

[environments.sandbox]
source = "bao"
signer = "transit"
transit_key = "smileid-bench"
partner_id = "085"

[environments.sandbox.allow]
uids = [{uid}]
"""


def parse_args() -> bench.Options:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured per run")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before each run")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (median)")
    parser.add_argument("--connections", type=int, default=32, help="keep-alive connections")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder and logs")
    a = parser.parse_args()
    return bench.Options(a.duration, a.warmup, a.rounds, a.connections, a.keep, None)


def transit_targets(folder: Path, server: OpenBao) -> list[bench.Target]:
    server.admin.sys.enable_secrets_engine("transit")
    policy = server.policy(
        'path "transit/keys/smileid-bench" { capabilities = ["read"] }\n'
        'path "transit/hmac/smileid-bench/*" { capabilities = ["update"] }\n'
        'path "transit/verify/smileid-bench/*" { capabilities = ["update"] }\n'
    )
    token = folder / "token"
    token.write_text(server.token([policy]))
    root = folder / "root-token"
    root.write_text(server.root_token)
    environment = EnvironmentConfig(
        "sandbox", "bao", "", "085", signer="transit", transit_key="smileid-bench"
    )
    auth = VaultAuthConfig(method="token", token_file=root)
    import_transit_key(VaultSourceConfig("bao", server.url, auth), environment, ApiKey(FAKE_KEY))
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S.123Z", time.gmtime())
    targets = []
    for name, body in (
        ("transit, presigned (no timestamp)", bench.REQUEST_BODY),
        (
            "transit, live (caller timestamp)",
            json.dumps({"environment": "sandbox", "timestamp": stamp}),
        ),
    ):
        slug = "presigned" if "presigned" in name else "live"
        sock = folder / f"sidkeyd-{slug}.sock"
        config = folder / f"sidkeyd-{slug}.toml"
        config.write_text(
            TRANSIT_CONFIG.format(socket=sock, url=server.url, token=token, uid=os.getuid())
        )
        argv = [sys.executable, "-m", "sidkeyd", "serve", "-c", str(config)]
        log = folder / f"sidkeyd-{slug}.log"
        targets.append(bench.Target(f"sidkeyd, {name}", argv, sock, log, audited=True, body=body))
    return targets


def transit_calls(target: bench.Target) -> tuple[int, int]:
    """(refill calls, live signatures) from a daemon's log: each is one Transit HMAC call."""
    refills = signatures = 0
    for line in target.log.read_text(errors="replace").splitlines():
        if '"presign.refilled"' in line:
            refills += int(json.loads(line).get("calls", 0))
        elif '"signature.issued"' in line and '.000Z"' not in line:
            signatures += 1
    return refills, signatures


def main() -> int:
    opts = parse_args()
    folder = Path(tempfile.mkdtemp(prefix="sidkeyd-bench-", dir="/tmp"))
    server = OpenBao.start(folder / "openbao")
    try:
        binary = bench.build_loadgen(folder)
        local = bench.make_targets(folder)[2]  # "sidkeyd, audit log on (info)": the local key
        local.name = "sidkeyd, local key (file source)"
        targets = [local, *transit_targets(folder, server)]
        try:
            for target in targets:
                bench.start(target)
            for target in targets:
                bench.wait_ready(target)
                bench.probe(target)
            for round_no in range(1, opts.rounds + 1):
                for target in targets:
                    result = bench.measure(binary, target, opts)
                    print(
                        f"round {round_no}: {target.name}: {result['rps']:,.0f} req/s",
                        file=sys.stderr,
                    )
        finally:
            for target in targets:
                bench.stop(target)
        bench.report(targets, opts)
        for target in targets[1:]:
            refills, live = transit_calls(target)
            print(f"\n'{target.name}': {refills} refill call(s), {live:,} live call(s) to Transit")
        return 1 if any(bench.summary(t)["errors"] for t in targets) else 0
    finally:
        server.stop()
        if opts.keep:
            print(f"kept {folder}", file=sys.stderr)
        else:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
