"""The Vault source against a real OpenBao dev server: KV v1/v2, auth methods, token lifecycle."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sidkeyd.config import (
    EnvironmentConfig,
    VaultAuthConfig,
    VaultSourceConfig,
)
from sidkeyd.errors import AccessLostError, PermanentSourceError, TransientSourceError
from sidkeyd.keystore import KeyStore
from sidkeyd.rotation import Trigger
from sidkeyd.sources import SecretValue, Unchanged
from sidkeyd.sources.vault import VaultSource
from support.engine import make_manager
from support.logs import LogCapture, captured
from support.openbao_server import CountingProxy, OpenBao, free_port
from support.tls import tls_hangup_url

pytestmark = pytest.mark.vault

WAIT = 20.0  # upper bound on waiting for an observable condition; never a sleep


# -- helpers ---------------------------------------------------------------------------


@pytest.fixture
def logs() -> Iterator[LogCapture]:
    with captured() as capture:
        yield capture


@dataclass
class Secret:
    """A KV path under a unique prefix, and a policy that can read only it."""

    path: str
    policy: str
    mount: str = "secret"


def read_only_policy(openbao: OpenBao, mount: str, path: str, kv_version: int) -> str:
    if kv_version == 1:
        rules = f'path "{mount}/{path}" {{ capabilities = ["read"] }}\n'
    else:
        rules = (
            f'path "{mount}/data/{path}" {{ capabilities = ["read"] }}\n'
            f'path "{mount}/metadata/{path}" {{ capabilities = ["read"] }}\n'
        )
    return openbao.policy(rules)


@pytest.fixture
def kv2(openbao: OpenBao) -> Secret:
    path = f"smileid/{openbao.unique('t')}/sandbox"
    openbao.kv2_put(path, {"api_key": "key-one", "partner_id": "085"})
    return Secret(path, read_only_policy(openbao, "secret", path, 2))


def environment(secret: Secret, **overrides: Any) -> EnvironmentConfig:
    return EnvironmentConfig(name="sandbox", source="vault", secret=secret.path, **overrides)


@pytest.fixture
def make_source(openbao: OpenBao) -> Iterator[Callable[..., VaultSource]]:
    made: list[VaultSource] = []

    def make(auth: VaultAuthConfig, **overrides: Any) -> VaultSource:
        config = VaultSourceConfig(name="vault", url=openbao.url, auth=auth, **overrides)
        source = VaultSource(config)
        made.append(source)
        return source

    yield make
    for source in made:
        source.close()


def write(folder: Path, name: str, value: str) -> Path:
    path = folder / name
    path.write_text(value + "\n")
    return path


def token_auth(openbao: OpenBao, folder: Path, policy: str, **token_args: Any) -> VaultAuthConfig:
    token_file = write(folder, "token", openbao.token([policy], **token_args))
    return VaultAuthConfig(method="token", token_file=token_file)


def approle_auth(openbao: OpenBao, folder: Path, policy: str, **role_args: Any) -> VaultAuthConfig:
    _role, role_id, secret_id = openbao.approle([policy], **role_args)
    return VaultAuthConfig(
        method="approle",
        role_id_file=write(folder, "role-id", role_id),
        secret_id_file=write(folder, "secret-id", secret_id),
    )


def sandbox_secret(server: OpenBao) -> Secret:
    """KV v2 smileid/sandbox holding key-one on a server of its own, with its read policy."""
    path = "smileid/sandbox"
    server.kv2_put(path, {"api_key": "key-one", "partner_id": "085"})
    return Secret(path, read_only_policy(server, "secret", path, 2))


def approle_source(server: OpenBao, folder: Path, policy: str, **role_args: Any) -> VaultSource:
    """A VaultSource on ``server`` logging in with a new AppRole holding ``policy``."""
    config = VaultSourceConfig(
        name="vault", url=server.url, auth=approle_auth(server, folder, policy, **role_args)
    )
    return VaultSource(config)


def placeholder_token_source(url: str, folder: Path) -> VaultSource:
    """A VaultSource at ``url`` with a token file holding a placeholder, for failing calls."""
    config = VaultSourceConfig(
        name="vault",
        url=url,
        auth=VaultAuthConfig(method="token", token_file=write(folder, "token", "t")),
    )
    return VaultSource(config)


def fetched(result: object) -> SecretValue:
    assert isinstance(result, SecretValue)
    return result


# -- KV v2 -----------------------------------------------------------------------------


def test_kv2_reads_latest_version_with_token_file(
    openbao: OpenBao, kv2: Secret, make_source: Callable[..., VaultSource], tmp_path: Path
) -> None:
    """A token from token_file reads the latest KV v2 version; its number is the key version."""
    source = make_source(token_auth(openbao, tmp_path, kv2.policy))

    value = fetched(source.fetch(environment(kv2), None))

    assert "key-one" == value.api_key.reveal()
    assert "085" == value.partner_id
    assert "1" == value.version


def test_kv2_unchanged_when_current_version_is_held(
    openbao: OpenBao, kv2: Secret, make_source: Callable[..., VaultSource], tmp_path: Path
) -> None:
    """With the current version held, the metadata check answers Unchanged."""
    source = make_source(token_auth(openbao, tmp_path, kv2.policy))

    result = source.fetch(environment(kv2), "1")

    assert Unchanged("1") == result


def test_kv2_token_from_environment_variable(
    openbao: OpenBao,
    kv2: Secret,
    make_source: Callable[..., VaultSource],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without token_file, the token comes from VAULT_TOKEN."""
    monkeypatch.setenv("VAULT_TOKEN", openbao.token([kv2.policy]))
    source = make_source(VaultAuthConfig(method="token"))

    value = fetched(source.fetch(environment(kv2), None))

    assert "key-one" == value.api_key.reveal()


def test_kv2_pinned_version_is_read_even_after_newer_writes(
    openbao: OpenBao, kv2: Secret, make_source: Callable[..., VaultSource], tmp_path: Path
) -> None:
    """environment.version pins a KV v2 version."""
    openbao.kv2_put(kv2.path, {"api_key": "key-two", "partner_id": "085"})
    source = make_source(token_auth(openbao, tmp_path, kv2.policy))

    value = fetched(source.fetch(environment(kv2, version=1), None))

    assert ("key-one", "1") == (value.api_key.reveal(), value.version)


def test_new_kv2_version_rotates_the_key_on_next_check(
    openbao: OpenBao,
    kv2: Secret,
    make_source: Callable[..., VaultSource],
    tmp_path: Path,
    logs: LogCapture,
) -> None:
    """A new KV version is picked up by the next check through the KeyManager: key.rotated."""
    source = make_source(token_auth(openbao, tmp_path, kv2.policy))
    env = environment(kv2)
    store = KeyStore()

    async def scenario() -> tuple[str | None, str | None]:
        manager, _ = make_manager({"vault": source}, env, store=store)
        first = await manager.check("sandbox", Trigger.STARTUP)
        openbao.kv2_put(kv2.path, {"api_key": "key-two", "partner_id": "085"})
        second = await manager.check("sandbox", Trigger.SCHEDULE)
        await manager.stop()
        return first.key_version, second.key_version

    assert ("1", "2") == asyncio.run(scenario())
    rotated = logs.wait_for("key.rotated", environment="sandbox")
    assert ("1", "2") == (rotated["old_version"], rotated["new_version"])
    snapshot = store.get("sandbox")
    assert snapshot is not None
    assert "key-two" == snapshot.api_key.reveal()


def test_kv2_check_with_delete_version_after_reads_only_the_metadata(
    openbao: OpenBao, tmp_path: Path
) -> None:
    """delete_version_after gives every version a future deletion_time: not deleted yet, so a
    check at the current version reads the metadata and not the data."""
    mount = openbao.unique("kv2")
    openbao.admin.sys.enable_secrets_engine("kv", path=mount, options={"version": "2"})
    openbao.admin.secrets.kv.v2.configure(delete_version_after="1h", mount_point=mount)
    path = "smileid/sandbox"
    openbao.kv2_put(path, {"api_key": "key-one", "partner_id": "085"}, mount=mount)
    secret = Secret(path, read_only_policy(openbao, mount, path, 2), mount)
    with CountingProxy(openbao.url) as proxy:
        config = VaultSourceConfig(
            name="vault",
            url=proxy.url,
            mount=mount,
            auth=token_auth(openbao, tmp_path, secret.policy),
        )
        source = VaultSource(config)
        try:
            result = source.fetch(environment(secret), "1")
        finally:
            source.close()
        reads = proxy.kv2_reads(path, mount=mount)

    assert Unchanged("1") == result
    assert [("GET", f"/v1/{mount}/metadata/{path}")] == reads


@pytest.mark.parametrize("removal", ["delete", "destroy"])
def test_deleted_latest_version_is_secret_deleted(
    openbao: OpenBao,
    kv2: Secret,
    make_source: Callable[..., VaultSource],
    tmp_path: Path,
    removal: str,
) -> None:
    """A soft-deleted or destroyed latest version is AccessLostError(secret_deleted)."""
    source = make_source(token_auth(openbao, tmp_path, kv2.policy))
    env = environment(kv2)
    source.fetch(env, None)
    kv = openbao.admin.secrets.kv.v2
    if removal == "delete":
        kv.delete_latest_version_of_secret(kv2.path)
    else:
        kv.destroy_secret_versions(kv2.path, versions=[1])

    with pytest.raises(AccessLostError) as check:
        source.fetch(env, "1")
    with pytest.raises(AccessLostError) as full_read:
        source.fetch(env, None)

    assert ("secret_deleted", "secret_deleted") == (check.value.code, full_read.value.code)


def test_deleted_latest_version_keeps_the_last_good_key(
    openbao: OpenBao, kv2: Secret, make_source: Callable[..., VaultSource], tmp_path: Path
) -> None:
    """After the latest version is deleted, the engine keeps serving the last good key."""
    source = make_source(token_auth(openbao, tmp_path, kv2.policy))
    store = KeyStore()

    async def scenario() -> tuple[str | None, str]:
        manager, _ = make_manager({"vault": source}, environment(kv2), store=store)
        await manager.check("sandbox", Trigger.STARTUP)
        openbao.admin.secrets.kv.v2.delete_latest_version_of_secret(kv2.path)
        outcome = await manager.check("sandbox", Trigger.SCHEDULE)
        serving = manager.signing_key("sandbox").version
        await manager.stop()
        return outcome.error, serving

    error, serving = asyncio.run(scenario())

    assert error is not None
    assert "deleted" in error
    assert "1" == serving


def test_missing_secret_is_access_lost(
    openbao: OpenBao, make_source: Callable[..., VaultSource], tmp_path: Path
) -> None:
    """A path that never existed is AccessLostError(secret_not_found)."""
    path = f"smileid/{openbao.unique('t')}/none"
    secret = Secret(path, read_only_policy(openbao, "secret", path, 2))
    source = make_source(token_auth(openbao, tmp_path, secret.policy))

    with pytest.raises(AccessLostError) as caught:
        source.fetch(environment(secret), None)

    assert "secret_not_found" == caught.value.code


# -- KV v1 -----------------------------------------------------------------------------


def test_kv1_versions_by_content_hash(
    openbao: OpenBao, make_source: Callable[..., VaultSource], tmp_path: Path
) -> None:
    """KV v1 has no versions: a content hash stands in, Unchanged until the content changes."""
    mount = openbao.kv1_mount()
    path = "smileid/sandbox"
    openbao.kv1_put(mount, path, {"api_key": "v1-key-one", "partner_id": "085"})
    secret = Secret(path, read_only_policy(openbao, mount, path, 1), mount)
    source = make_source(token_auth(openbao, tmp_path, secret.policy), mount=mount, kv_version=1)
    env = environment(secret)

    first = fetched(source.fetch(env, None))
    again = source.fetch(env, first.version)
    openbao.kv1_put(mount, path, {"api_key": "v1-key-two", "partner_id": "085"})
    changed = fetched(source.fetch(env, first.version))

    assert first.version.startswith("scrypt:")
    assert Unchanged(first.version) == again
    assert "v1-key-two" == changed.api_key.reveal()
    assert first.version != changed.version


# -- AppRole and policies --------------------------------------------------------------


def test_approle_reads_only_what_its_policy_allows(
    openbao: OpenBao,
    kv2: Secret,
    make_source: Callable[..., VaultSource],
    tmp_path: Path,
    logs: LogCapture,
) -> None:
    """An AppRole login reads its secret; outside its policy: access_denied, no re-login."""
    other = f"smileid/{openbao.unique('t')}/production"
    openbao.kv2_put(other, {"api_key": "not-yours", "partner_id": "085"})
    source = make_source(approle_auth(openbao, tmp_path, kv2.policy))

    value = fetched(source.fetch(environment(kv2), None))
    with pytest.raises(AccessLostError) as caught:
        source.fetch(EnvironmentConfig(name="production", source="vault", secret=other), None)

    assert "key-one" == value.api_key.reveal()
    assert "access_denied" == caught.value.code
    assert "not-yours" not in str(caught.value)
    assert [] == logs.matching("vault.reauthenticated")


def test_approle_secret_id_file_removed_and_kept_in_memory(
    openbao: OpenBao,
    kv2: Secret,
    make_source: Callable[..., VaultSource],
    tmp_path: Path,
    logs: LogCapture,
) -> None:
    """With remove_secret_id_file_after_reading the file goes; the secret id serves re-logins."""
    auth = approle_auth(openbao, tmp_path, kv2.policy)
    auth = VaultAuthConfig(
        method="approle",
        role_id_file=auth.role_id_file,
        secret_id_file=auth.secret_id_file,
        remove_secret_id_file_after_reading=True,
    )
    source = make_source(auth)
    env = environment(kv2)

    fetched(source.fetch(env, None))
    assert auth.secret_id_file is not None
    removed = not auth.secret_id_file.exists()
    openbao.revoke_approle_tokens()
    after = source.fetch(env, "1")

    assert removed
    assert Unchanged("1") == after
    assert "permission_denied" == logs.wait_for("vault.reauthenticated")["reason"]


def test_revoked_token_is_replaced_by_logging_in_again(
    openbao: OpenBao,
    kv2: Secret,
    make_source: Callable[..., VaultSource],
    tmp_path: Path,
    logs: LogCapture,
) -> None:
    """A 403 after the token was revoked triggers a re-login and one retry of the read."""
    source = make_source(approle_auth(openbao, tmp_path, kv2.policy))
    env = environment(kv2)
    source.fetch(env, None)

    openbao.revoke_approle_tokens()
    result = source.fetch(env, "1")

    assert Unchanged("1") == result
    event = logs.wait_for("vault.reauthenticated")
    assert ("approle", "permission_denied") == (event["auth_method"], event["reason"])


def test_token_file_is_reread_after_revocation(
    openbao: OpenBao, kv2: Secret, make_source: Callable[..., VaultSource], tmp_path: Path
) -> None:
    """Vault Agent rewrites token_file: after a 403 the new token in the file is used."""
    auth = token_auth(openbao, tmp_path, kv2.policy)
    assert auth.token_file is not None
    source = make_source(auth)
    env = environment(kv2)
    source.fetch(env, None)

    openbao.admin.auth.token.revoke(auth.token_file.read_text().strip())
    write(tmp_path, "token", openbao.token([kv2.policy]))
    result = source.fetch(env, "1")

    assert Unchanged("1") == result


def test_rejected_credentials_are_auth_failed_without_the_secret(
    openbao: OpenBao, kv2: Secret, make_source: Callable[..., VaultSource], tmp_path: Path
) -> None:
    """A wrong secret id is AccessLostError(auth_failed); the message does not repeat it."""
    _role, role_id, _secret_id = openbao.approle([kv2.policy])
    wrong = "00000000-dead-beef-0000-000000000000"
    source = make_source(
        VaultAuthConfig(
            method="approle",
            role_id_file=write(tmp_path, "role-id", role_id),
            secret_id_file=write(tmp_path, "secret-id", wrong),
        )
    )

    with pytest.raises(AccessLostError) as caught:
        source.fetch(environment(kv2), None)

    assert "auth_failed" == caught.value.code
    assert wrong not in str(caught.value)
    assert role_id not in str(caught.value)


# -- token lifecycle -------------------------------------------------------------------


def test_short_lived_token_is_renewed_in_the_background(
    openbao: OpenBao,
    kv2: Secret,
    make_source: Callable[..., VaultSource],
    tmp_path: Path,
    logs: LogCapture,
) -> None:
    """A token with a 3s TTL is renewed at about two thirds of it and keeps reading."""
    source = make_source(approle_auth(openbao, tmp_path, kv2.policy, token_ttl="3s"))
    env = environment(kv2)
    source.fetch(env, None)

    renewed = logs.wait_for("vault.token_renewed", source="vault")
    result = source.fetch(env, "1")

    assert 3 == renewed["ttl_s"]
    assert Unchanged("1") == result
    assert [] == logs.matching("vault.reauthenticated")


def test_token_near_max_ttl_is_replaced_by_a_new_login(
    openbao: OpenBao,
    kv2: Secret,
    make_source: Callable[..., VaultSource],
    tmp_path: Path,
    logs: LogCapture,
) -> None:
    """When a renewal is capped by the max TTL, the source logs in again."""
    source = make_source(
        approle_auth(openbao, tmp_path, kv2.policy, token_ttl="3s", token_max_ttl="6s")
    )
    env = environment(kv2)
    source.fetch(env, None)

    event = logs.wait_for("vault.reauthenticated", reason="max_ttl")
    result = source.fetch(env, "1")

    assert ("approle", 3) == (event["auth_method"], event["ttl_s"])
    assert Unchanged("1") == result


@pytest.mark.skipif(not hasattr(time, "CLOCK_BOOTTIME"), reason="needs CLOCK_BOOTTIME (Linux)")
def test_token_that_expired_while_suspended_is_replaced_before_the_read(
    openbao: OpenBao,
    kv2: Secret,
    make_source: Callable[..., VaultSource],
    tmp_path: Path,
    logs: LogCapture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After a suspend longer than the token's TTL (CLOCK_BOOTTIME moved on, the monotonic
    clock did not), the next check logs in again before reading."""
    source = make_source(approle_auth(openbao, tmp_path, kv2.policy, token_ttl="1h"))
    env = environment(kv2)
    source.fetch(env, None)
    clock_gettime = time.clock_gettime

    def two_hours_later(clock: int) -> float:
        return clock_gettime(clock) + (7200.0 if clock == time.CLOCK_BOOTTIME else 0.0)

    monkeypatch.setattr(time, "clock_gettime", two_hours_later)
    result = source.fetch(env, "1")

    assert Unchanged("1") == result
    assert ["token_expired"] == [e["reason"] for e in logs.matching("vault.reauthenticated")]


def test_capped_renewal_without_token_file_is_not_a_failure(
    openbao: OpenBao,
    kv2: Secret,
    make_source: Callable[..., VaultSource],
    tmp_path: Path,
    logs: LogCapture,
) -> None:
    """A renewal capped by the max TTL while token_file is missing is still a renewal."""
    created = openbao.admin.auth.token.create(
        policies=[kv2.policy], ttl="3s", explicit_max_ttl="4s", renewable=True, no_parent=True
    )
    token_file = write(tmp_path, "token", created["auth"]["client_token"])
    source = make_source(VaultAuthConfig(method="token", token_file=token_file))
    source.fetch(environment(kv2), None)
    login_ttl = logs.wait_for("vault.authenticated")["ttl_s"]
    token_file.unlink()  # Vault Agent is about to write a new one

    logs.wait_until("vault.token_renewed", lambda e: e["ttl_s"] < login_ttl)
    source.close()  # waits for the renewer: whatever followed the renewal is logged by now

    assert [] == logs.matching("vault.token_renewal_failed")


def test_close_stops_the_renewer(
    openbao: OpenBao, kv2: Secret, make_source: Callable[..., VaultSource], tmp_path: Path
) -> None:
    """close() stops the background renewal thread."""
    source = make_source(approle_auth(openbao, tmp_path, kv2.policy))
    source.fetch(environment(kv2), None)
    name = f"sidkeyd-vault-renew-{source.name}"

    running = [t for t in threading.enumerate() if t.name == name]
    source.close()

    assert 1 <= len(running)
    assert not any(t.is_alive() for t in running)


def test_close_stops_a_fetch_in_flight_before_it_logs_in_again(
    openbao: OpenBao, kv2: Secret, tmp_path: Path
) -> None:
    """A fetch holding the lock when close() is called stops at its next step: source_closed."""
    outcome: list[object] = []
    env = environment(kv2)
    with CountingProxy(openbao.url) as proxy:
        config = VaultSourceConfig(
            name="vault", url=proxy.url, auth=approle_auth(openbao, tmp_path, kv2.policy)
        )
        source = VaultSource(config)
        source.fetch(env, None)
        openbao.revoke_approle_tokens()  # the next read is refused: a re-login would follow

        def check() -> None:
            try:
                outcome.append(source.fetch(env, "1"))
            except TransientSourceError as exc:
                outcome.append(exc)

        proxy.hold()
        fetching = threading.Thread(target=check)
        fetching.start()
        assert proxy.wait_held(WAIT)  # the fetch holds the lock, its read held by the proxy
        closing = threading.Thread(target=source.close)
        closing.start()
        assert source._closing.wait(WAIT)  # close() is now waiting for the lock
        proxy.release()
        fetching.join(WAIT)
        closing.join(WAIT)

    assert 1 == len(outcome)
    assert isinstance(outcome[0], TransientSourceError)
    assert "source_closed" == outcome[0].code


def test_fetch_after_close_is_refused(
    openbao: OpenBao, kv2: Secret, make_source: Callable[..., VaultSource], tmp_path: Path
) -> None:
    """A closed source makes no call: TransientSourceError(source_closed)."""
    source = make_source(approle_auth(openbao, tmp_path, kv2.policy))
    source.close()

    with pytest.raises(TransientSourceError) as caught:
        source.fetch(environment(kv2), None)

    assert "source_closed" == caught.value.code


# -- outages ---------------------------------------------------------------------------


def test_sealed_vault_is_transient_and_recovers_after_unseal(
    private_openbao: OpenBao, tmp_path: Path
) -> None:
    """Sealed: TransientSourceError; after unseal the next check succeeds, no restart needed."""
    server = private_openbao
    secret = sandbox_secret(server)
    source = approle_source(server, tmp_path, secret.policy)
    env = environment(secret)
    try:
        source.fetch(env, None)
        server.seal()
        try:
            with pytest.raises(TransientSourceError) as caught:
                source.fetch(env, "1")
        finally:
            server.unseal()
        after = source.fetch(env, "1")
    finally:
        source.close()

    assert "vault_unavailable" == caught.value.code
    assert Unchanged("1") == after


def test_renewer_backs_off_while_sealed_and_recovers(
    private_openbao: OpenBao, tmp_path: Path, logs: LogCapture
) -> None:
    """Renewals failing on a sealed Vault are logged and retried; after unseal reads work again."""
    server = private_openbao
    secret = sandbox_secret(server)
    source = approle_source(server, tmp_path, secret.policy, token_ttl="3s")
    env = environment(secret)
    try:
        source.fetch(env, None)
        server.seal()
        try:
            failed = logs.wait_for("vault.token_renewal_failed")
        finally:
            server.unseal()
        after = source.fetch(env, "1")
    finally:
        source.close()

    assert ("transient", "vault_unavailable") == (failed["error_kind"], failed["error_code"])
    assert Unchanged("1") == after


def test_unreachable_vault_is_transient(tmp_path: Path) -> None:
    """Nothing listening: TransientSourceError(unreachable), not a crash."""
    source = placeholder_token_source(f"http://127.0.0.1:{free_port()}", tmp_path)
    try:
        with pytest.raises(TransientSourceError) as caught:
            source.fetch(EnvironmentConfig(name="s", source="vault", secret="x"), None)
    finally:
        source.close()

    assert "unreachable" == caught.value.code


def test_no_log_line_carries_a_credential(
    openbao: OpenBao,
    kv2: Secret,
    make_source: Callable[..., VaultSource],
    tmp_path: Path,
    logs: LogCapture,
) -> None:
    """Login, renewal and re-login events name the method and TTL, never a credential."""
    auth = approle_auth(openbao, tmp_path, kv2.policy, token_ttl="3s")
    assert auth.role_id_file is not None
    assert auth.secret_id_file is not None
    credentials = [auth.role_id_file.read_text().strip(), auth.secret_id_file.read_text().strip()]
    source = make_source(auth)
    source.fetch(environment(kv2), None)
    logs.wait_for("vault.token_renewed")
    openbao.revoke_approle_tokens()
    source.fetch(environment(kv2), "1")
    logs.wait_for("vault.reauthenticated")

    text = repr(logs.events) + repr(source)

    assert [] == [c for c in [*credentials, "key-one"] if c in text]


# -- TLS -------------------------------------------------------------------------------

TLS_NAME = "vault.sidkeyd.test"


def make_tls_files(folder: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate valid for TLS_NAME only (no IP SAN)."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(common: str) -> Any:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("sidkeyd test CA"))
        .issuer_name(name("sidkeyd test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name(TLS_NAME))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(TLS_NAME)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    paths = folder / "ca.pem", folder / "server.pem", folder / "server-key.pem"
    paths[0].write_bytes(ca.public_bytes(pem))
    paths[1].write_bytes(cert.public_bytes(pem))
    paths[2].write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


@dataclass
class TlsServer:
    server: OpenBao
    https_url: str
    ca_cert: Path


@pytest.fixture
def tls_openbao(tmp_path: Path) -> Iterator[TlsServer]:
    """A server of its own with an extra HTTPS listener whose certificate names TLS_NAME only."""
    folder = tmp_path / "openbao-tls"
    folder.mkdir()
    ca, cert, key = make_tls_files(folder)
    port = free_port()
    listener = folder / "listener.hcl"
    listener.write_text(
        f'listener "tcp" {{\n  address = "127.0.0.1:{port}"\n'
        f'  tls_cert_file = "{cert}"\n  tls_key_file = "{key}"\n}}\n'
    )
    server = OpenBao.start(folder, extra_args=(f"-config={listener}",))
    try:
        yield TlsServer(server, f"https://127.0.0.1:{port}", ca)
    finally:
        server.stop()


def tls_source(tls: TlsServer, folder: Path, **overrides: Any) -> tuple[VaultSource, Secret]:
    secret = sandbox_secret(tls.server)
    config = VaultSourceConfig(
        name="vault",
        url=tls.https_url,
        auth=token_auth(tls.server, folder, secret.policy),
        ca_cert=tls.ca_cert,
        **overrides,
    )
    return VaultSource(config), secret


def test_tls_handshake_cut_short_is_transient(tmp_path: Path) -> None:
    """A TLS handshake ended by the server (EOF) is TransientSourceError, not tls_error."""
    with tls_hangup_url() as url:
        source = placeholder_token_source(url, tmp_path)
        try:
            with pytest.raises(TransientSourceError) as caught:
                source.fetch(EnvironmentConfig(name="s", source="vault", secret="x"), None)
        finally:
            source.close()

    assert "tls_connection_error" == caught.value.code


def test_tls_server_name_verifies_a_certificate_for_another_name(
    tls_openbao: TlsServer, tmp_path: Path
) -> None:
    """tls_server_name is sent as SNI and checked against the certificate, not the URL's host."""
    source, secret = tls_source(tls_openbao, tmp_path, tls_server_name=TLS_NAME)
    try:
        value = fetched(source.fetch(environment(secret), None))
    finally:
        source.close()

    assert "key-one" == value.api_key.reveal()


def test_certificate_for_another_name_is_refused_without_tls_server_name(
    tls_openbao: TlsServer, tmp_path: Path
) -> None:
    """Verification is on by default: a name mismatch is PermanentSourceError(tls_error)."""
    source, secret = tls_source(tls_openbao, tmp_path)
    try:
        with pytest.raises(PermanentSourceError) as caught:
            source.fetch(environment(secret), None)
    finally:
        source.close()

    assert "tls_error" == caught.value.code


def test_client_certificate_is_not_taken_from_the_environment(tmp_path: Path) -> None:
    """VAULT_CLIENT_CERT and VAULT_CLIENT_KEY are ignored: no client_cert configured, none sent."""
    cert = write(tmp_path, "client.pem", "not used")
    program = (
        "from sidkeyd.config import VaultAuthConfig, VaultSourceConfig\n"
        "from sidkeyd.sources.vault import VaultSource\n"
        "config = VaultSourceConfig(\n"
        "    name='vault', url='https://127.0.0.1:1', auth=VaultAuthConfig(method='token')\n"
        ")\n"
        "print(repr(VaultSource(config)._client.adapter._kwargs['cert']))\n"
    )
    # hvac reads the variables when it is imported: hence a process of its own.
    env = {**os.environ, "VAULT_CLIENT_CERT": str(cert), "VAULT_CLIENT_KEY": str(cert)}

    ran = subprocess.run(
        [sys.executable, "-c", program], env=env, capture_output=True, text=True, timeout=WAIT
    )

    assert ("None", "") == (ran.stdout.strip(), ran.stderr)


# -- JWT -------------------------------------------------------------------------------


def signed_jwt(key: Any, claims: dict[str, Any]) -> str:
    """An ES256 JWT, built by hand so no JWT library is needed."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "ES256", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    der = key.sign(f"{header}.{body}".encode(), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    return f"{header}.{body}.{b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def jwt_role(openbao: OpenBao, policy: str) -> tuple[str, Any]:
    """A jwt auth mount trusting a new key, with role sidkeyd: (mount, private key)."""
    pytest.importorskip("cryptography")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    mount = openbao.unique("jwt")
    openbao.admin.sys.enable_auth_method("jwt", path=mount)
    openbao.admin.auth.jwt.configure(jwt_validation_pubkeys=[public_pem.decode()], path=mount)
    openbao.admin.auth.jwt.create_role(
        name="sidkeyd",
        role_type="jwt",
        user_claim="sub",
        bound_audiences=["sidkeyd"],
        allowed_redirect_uris=[],
        token_policies=[policy],
        path=mount,
    )
    return mount, key


def host_jwt(key: Any) -> str:
    now = int(time.time())
    return signed_jwt(key, {"sub": "host-1", "aud": "sidkeyd", "iat": now, "exp": now + 600})


def test_jwt_login_reads_the_secret(
    openbao: OpenBao,
    kv2: Secret,
    make_source: Callable[..., VaultSource],
    tmp_path: Path,
    logs: LogCapture,
) -> None:
    """auth method jwt logs in at its mount with jwt_file and role."""
    mount, key = jwt_role(openbao, kv2.policy)
    source = make_source(
        VaultAuthConfig(
            method="jwt",
            mount=mount,
            role="sidkeyd",
            jwt_file=write(tmp_path, "jwt", host_jwt(key)),
        )
    )

    value = fetched(source.fetch(environment(kv2), None))

    assert "key-one" == value.api_key.reveal()
    assert "jwt" == logs.wait_for("vault.authenticated")["auth_method"]


def test_refused_jwt_login_is_permanent_not_access_lost(
    openbao: OpenBao, kv2: Secret, make_source: Callable[..., VaultSource], tmp_path: Path
) -> None:
    """A jwt login refused (here: signed by a key Vault does not trust) is auth_failed, but
    permanent, not lost access: jwt also refuses when Vault cannot fetch the IdP's keys."""
    from cryptography.hazmat.primitives.asymmetric import ec

    mount, _key = jwt_role(openbao, kv2.policy)
    untrusted = host_jwt(ec.generate_private_key(ec.SECP256R1()))
    source = make_source(
        VaultAuthConfig(
            method="jwt", mount=mount, role="sidkeyd", jwt_file=write(tmp_path, "jwt", untrusted)
        )
    )

    with pytest.raises(PermanentSourceError) as caught:
        source.fetch(environment(kv2), None)

    assert (PermanentSourceError, "auth_failed") == (type(caught.value), caught.value.code)
