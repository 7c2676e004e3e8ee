"""Administrative actions in the audit trail of a real daemon: reloads and refreshes.

PCI DSS 10.2.2 wants administrative actions recorded: a config reload (SIGHUP or
``POST /v1/reload``), applied or refused, and an admin refresh each get a record naming who
and what (key paths, never values), and the trail holding them still verifies.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from support.configs import file_config, key_file

KEY = "audit-admin-key-3c5f-not-real"


def audit_records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def audit_verify(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidkeyd", "audit", "verify", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_reloads_and_a_refresh_are_recorded_with_who_and_what_and_the_chain_verifies(
    start_daemon, tmp_path: Path
) -> None:
    """A SIGHUP reload (applied), a POST /v1/reload (refused) and a POST /v1/refresh: three
    records with their who, result and key paths, no key and no value; verify exits 0."""
    path = tmp_path / "audit.jsonl"
    config = file_config(sections=f'[audit]\npath = "{path}"\n')
    daemon = start_daemon(config, files=key_file(KEY))
    client = daemon.client()
    text = config.replace("{socket}", str(daemon.socket_path))
    daemon.config_path.write_text(
        text.replace('format = "json"', 'format = "json"\nlevel = "debug"')
    )
    daemon.signal(signal.SIGHUP)
    daemon.wait_for_event("config.reloaded")
    daemon.config_path.write_text(text.replace('partner_id = "085"', "partner_id = 85"))
    refused_status, _ = client.request("POST", "/v1/reload", {})
    client.refresh()
    assert 0 == daemon.stop()

    records = audit_records(path)
    reloads = [r for r in records if r["event"] == "admin.reloaded"]
    refresh = next(r for r in records if r["event"] == "admin.refreshed")
    assert 422 == refused_status
    assert [("applied", "signal"), ("refused", "peer")] == [(r["result"], r["by"]) for r in reloads]
    assert ["log.level: changed"] == reloads[0]["changes"]
    assert ("config_invalid", ["environments.sandbox.partner_id"]) == (
        reloads[1]["reason"],
        reloads[1]["problems"],
    )
    assert (os.getuid(), "peer", ["sandbox"], []) == (
        refresh["peer_uid"],
        refresh["by"],
        refresh["environments"],
        refresh["failed"],
    )
    assert "peer_uid" not in reloads[0]
    assert os.getuid() == reloads[1]["peer_uid"]
    trail = path.read_text()
    assert KEY not in trail
    assert "debug" not in trail
    verified = audit_verify(path)
    assert (0, "ok: ") == (verified.returncode, verified.stdout[:4])
