"""Issue 5 against a real OpenBao: the daemon as a process, AppRole logins with real policies.

Rotation noticed through a client's report, a burst of reports costing one read, a sealed
server (degraded, then stale), a denied read (revoked after the grace, restored after the
policy is), and verification with the previous version. Every wait is on a logged event.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest

from support import signatures
from support.daemon import Daemon, refused
from support.openbao_server import CountingProxy, OpenBao
from support.schedules import FAST_SCHEDULE, NO_SCHEDULE

pytestmark = pytest.mark.vault

FIRST_KEY = "e2e-vault-rotation-key-one-5d1e-not-real"
ROTATED_KEY = "e2e-vault-rotation-key-two-a7c4-not-real"
PARTNER_ID = "085"

CONFIG = """
[server]
socket = "{socket}"

[refresh]
@REFRESH@

[log]
format = "json"
level = "debug"

[sources.bao]
type = "vault"
url = "@URL@"
mount = "secret"
kv_version = 2

[sources.bao.auth]
method = "approle"
role_id_file = "role-id"
secret_id_file = "secret-id"

[environments.sandbox]
source = "bao"
secret = "@PATH@"
"""

StartDaemon = Callable[..., Daemon]


def expected_signature(key: str, timestamp: str, partner_id: str = PARTNER_ID) -> str:
    return signatures.expected_signature(key, timestamp, partner_id)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Tenant:
    """One host's secret in OpenBao: a KV v2 path, a read-only policy and an AppRole."""

    server: OpenBao
    path: str
    policy: str
    rules: str
    role_id: str
    secret_id: str

    @classmethod
    def create(cls, server: OpenBao) -> Tenant:
        path = f"smileid/{server.unique('rotation')}/sandbox"
        server.kv2_put(path, {"api_key": FIRST_KEY, "partner_id": PARTNER_ID})
        rules = (
            f'path "secret/data/{path}" {{ capabilities = ["read"] }}\n'
            f'path "secret/metadata/{path}" {{ capabilities = ["read"] }}\n'
        )
        policy = server.policy(rules)
        _role, role_id, secret_id = server.approle([policy])
        return cls(server, path, policy, rules, role_id, secret_id)

    @property
    def secrets(self) -> list[str]:
        """What must never appear in the daemon's log."""
        return [FIRST_KEY, ROTATED_KEY, self.role_id, self.secret_id]

    def rotate(self) -> int:
        """Write the rotated key as a new KV v2 version; returns its number."""
        return self.server.kv2_put(self.path, {"api_key": ROTATED_KEY, "partner_id": PARTNER_ID})

    def deny(self) -> None:
        """Take the read permission away from the AppRole's policy (tokens keep working)."""
        self.server.admin.sys.create_or_update_policy(
            name=self.policy, policy='path "secret/data/nothing-here" { capabilities = ["read"] }'
        )

    def allow(self) -> None:
        self.server.admin.sys.create_or_update_policy(name=self.policy, policy=self.rules)

    def start(self, start_daemon: StartDaemon, refresh: str, url: str | None = None) -> Daemon:
        config = (
            CONFIG.replace("@REFRESH@", refresh)
            .replace("@URL@", url or self.server.url)
            .replace("@PATH@", self.path)
        )
        daemon = start_daemon(config, files={"role-id": self.role_id, "secret-id": self.secret_id})
        daemon.wait_for_event("key.loaded", environment="sandbox")
        return daemon


@dataclass
class FakeSmileResponse:
    status_code: int


@pytest.fixture
def tenant(openbao: OpenBao) -> Tenant:
    """A tenant on the shared server (for tests that do not seal it)."""
    return Tenant.create(openbao)


def signed_with(key: str, signed: dict[str, Any]) -> bool:
    """Whether the daemon's ``signed`` answer carries the HMAC of ``key`` (computed here)."""
    signature: str = signed["signature"]
    return expected_signature(key, signed["timestamp"]) == signature


# -- a rotation noticed through a report -------------------------------------------------


def test_rejected_signature_is_reported_and_the_retry_uses_the_new_vault_version(
    tenant: Tenant, start_daemon: StartDaemon
) -> None:
    """send_signed: Smile ID accepts only the new key; the report makes the retry use KV v2."""
    daemon = tenant.start(start_daemon, NO_SCHEDULE)
    new_version = tenant.rotate()  # no SIGHUP, no schedule: only the report can reveal it
    sent: list[dict[str, Any]] = []

    def smile_id(signed: dict[str, Any]) -> FakeSmileResponse:
        sent.append(signed)
        return FakeSmileResponse(200 if signed_with(ROTATED_KEY, signed) else 401)

    result = daemon.client().send_signed("sandbox", smile_id)
    rotated = daemon.wait_for_event("key.rotated", environment="sandbox", trigger="report")

    assert 200 == result.status_code
    assert ["1", str(new_version)] == [s["key_version"] for s in sent]
    assert [True, True] == [signed_with(FIRST_KEY, sent[0]), signed_with(ROTATED_KEY, sent[1])]
    assert ("1", "2") == (rotated["old_version"], rotated["new_version"])
    daemon.assert_no_secret_in_logs(tenant.secrets)


def test_report_of_the_old_version_answers_and_signs_with_the_new_one(
    tenant: Tenant, start_daemon: StartDaemon
) -> None:
    """POST /v1/report names the version read from Vault; the very next signature uses it."""
    daemon = tenant.start(start_daemon, NO_SCHEDULE)
    client = daemon.client()
    tenant.rotate()

    answer = client.report("sandbox", "1", 401)
    signed = client.sign("sandbox")

    assert {"checked": True, "changed": True, "key_version": "2", "reason": "checked"} == {
        k: answer[k] for k in ("checked", "changed", "key_version", "reason")
    }
    assert ("2", True) == (signed["key_version"], signed_with(ROTATED_KEY, signed))
    daemon.assert_no_secret_in_logs(tenant.secrets)


def test_a_burst_of_reports_reads_the_secret_from_vault_once(
    tenant: Tenant, start_daemon: StartDaemon
) -> None:
    """100 reports from 10 connections at once: a single KV read reaches OpenBao."""
    with CountingProxy(tenant.server.url) as proxy:
        daemon = tenant.start(start_daemon, NO_SCHEDULE, url=proxy.url)
        clients = [daemon.client() for _ in range(10)]
        tenant.rotate()
        mark = proxy.mark()
        with ThreadPoolExecutor(10) as pool:
            answers = list(
                pool.map(lambda i: clients[i % 10].report("sandbox", "1", 401), range(100))
            )
        reads = proxy.kv2_reads(tenant.path, since=mark)
        signed = clients[0].sign("sandbox")

    assert [("GET", f"/v1/secret/data/{tenant.path}")] == reads
    assert 1 == len(daemon.events("refresh.forced", trigger="report"))
    assert {"2"} == {a["key_version"] for a in answers}
    assert ("2", True) == (signed["key_version"], signed_with(ROTATED_KEY, signed))
    daemon.assert_no_secret_in_logs(tenant.secrets)


# -- outages -----------------------------------------------------------------------------


def test_sealed_vault_degrades_while_signing_continues_and_recovers_after_unseal(
    private_openbao: OpenBao, start_daemon: StartDaemon
) -> None:
    """Sealed: signatures flow, status degraded with the error, health 200; unsealed: healthy."""
    tenant = Tenant.create(private_openbao)
    daemon = tenant.start(start_daemon, FAST_SCHEDULE)
    client = daemon.client()

    private_openbao.seal()
    failed = daemon.wait_for_event("key.refresh_failed", environment="sandbox")
    signed = client.sign("sandbox")
    degraded = client.status()["environments"]["sandbox"]
    health_status, health = client.request("GET", "/v1/health")
    # Every check fails while sealed, so the next successful one comes after the unseal.
    checks = len(daemon.events("key.check", environment="sandbox"))
    private_openbao.unseal()
    daemon.wait_for_event("key.check", count=checks + 1, environment="sandbox")
    recovered = client.status()["environments"]["sandbox"]

    assert ("transient", "vault_unavailable", "1") == (
        failed["error_kind"],
        failed["error_code"],
        failed["serving_version"],
    )
    assert ("1", True) == (signed["key_version"], signed_with(FIRST_KEY, signed))
    assert ("degraded", "transient", "vault_unavailable") == (
        degraded["health"],
        degraded["last_error"]["kind"],
        degraded["last_error"]["code"],
    )
    assert "vault_unavailable" in degraded["reason"]
    assert (200, "degraded") == (health_status, health["environments"]["sandbox"]["health"])
    assert ("healthy", None, 0, "1") == (
        recovered["health"],
        recovered["last_error"],
        recovered["consecutive_failures"],
        recovered["key_version"],
    )
    daemon.assert_no_secret_in_logs(tenant.secrets)


def test_sealed_vault_beyond_max_stale_refuses_to_sign_until_a_check_succeeds(
    private_openbao: OpenBao, start_daemon: StartDaemon
) -> None:
    """max_stale 2s and sealed: key.stale, sign 503 key_stale; unsealed and refreshed: signing."""
    tenant = Tenant.create(private_openbao)
    daemon = tenant.start(start_daemon, FAST_SCHEDULE + 'max_stale = "2s"\n')
    client = daemon.client()

    private_openbao.seal()
    daemon.wait_for_event("key.stale", environment="sandbox")
    stale_sign = refused(lambda: client.sign("sandbox"))
    health_status, _ = client.request("GET", "/v1/health")
    restored_before = len(daemon.events("key.restored", environment="sandbox"))
    private_openbao.unseal()
    client.refresh("sandbox")  # may join a scheduled check; either one restores the key
    daemon.wait_for_event("key.restored", count=restored_before + 1, environment="sandbox")
    signed = client.sign("sandbox")

    assert (503, "key_stale") == stale_sign
    assert 503 == health_status
    assert ("1", True) == (signed["key_version"], signed_with(FIRST_KEY, signed))
    daemon.assert_no_secret_in_logs(tenant.secrets)


def test_denied_read_revokes_the_key_after_the_grace_until_the_policy_is_restored(
    tenant: Tenant, start_daemon: StartDaemon
) -> None:
    """Policy loses read: key.revoked after 1s, 503 key_revoked; policy back + refresh: signing."""
    daemon = tenant.start(start_daemon, NO_SCHEDULE + 'revoke_grace = "1s"\n')
    client = daemon.client()

    tenant.deny()
    denied = client.refresh("sandbox")["results"][0]
    revoked = daemon.wait_for_event("key.revoked", environment="sandbox")
    revoked_sign = refused(lambda: client.sign("sandbox"))
    health_status, health = client.request("GET", "/v1/health")
    tenant.allow()
    allowed = client.refresh("sandbox")["results"][0]
    restored = daemon.wait_for_event("key.restored", environment="sandbox")
    signed = client.sign("sandbox")

    assert ("1", False) == (denied["key_version"], denied["changed"])
    assert "permission denied" in denied["error"]
    assert "1" == revoked["key_version"]
    assert (503, "key_revoked") == revoked_sign
    assert (503, "unavailable") == (health_status, health["environments"]["sandbox"]["health"])
    assert ("1", None) == (allowed["key_version"], allowed["error"])
    assert ("admin", "1") == (restored["trigger"], restored["key_version"])
    assert ("1", True) == (signed["key_version"], signed_with(FIRST_KEY, signed))
    failure = daemon.events("key.refresh_failed", environment="sandbox")[0]
    assert ("permanent", "access_denied") == (failure["error_kind"], failure["error_code"])
    daemon.assert_no_secret_in_logs(tenant.secrets)


# -- verification across a rotation ------------------------------------------------------


def test_verify_accepts_the_previous_vault_version_within_verify_previous_for(
    tenant: Tenant, start_daemon: StartDaemon
) -> None:
    """verify_previous_for 1h: a signature made with version 1 still verifies after rotation."""
    daemon = tenant.start(start_daemon, NO_SCHEDULE + 'verify_previous_for = "1h"\n')
    client = daemon.client()
    tenant.rotate()
    client.refresh("sandbox")
    timestamp = now_iso()

    answer = client.verify("sandbox", timestamp, expected_signature(FIRST_KEY, timestamp))

    assert (True, "1", "2") == (
        answer["valid"],
        answer["key_version"],
        answer["current_key_version"],
    )
    daemon.assert_no_secret_in_logs(tenant.secrets)


def test_verify_rejects_the_previous_vault_version_by_default(
    tenant: Tenant, start_daemon: StartDaemon
) -> None:
    """With the default verify_previous_for (0s) the previous version verifies nothing."""
    daemon = tenant.start(start_daemon, NO_SCHEDULE)
    client = daemon.client()
    tenant.rotate()
    client.refresh("sandbox")
    timestamp = now_iso()

    answer = client.verify("sandbox", timestamp, expected_signature(FIRST_KEY, timestamp))

    assert (False, None, "2") == (
        answer["valid"],
        answer["key_version"],
        answer["current_key_version"],
    )
    daemon.assert_no_secret_in_logs(tenant.secrets)
