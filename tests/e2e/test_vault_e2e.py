"""The daemon with a Vault source (AppRole) against a real OpenBao dev server."""

from __future__ import annotations

import signal
from collections.abc import Callable

import pytest

from support.daemon import Daemon
from support.openbao_server import OpenBao
from support.signatures import expected_signature

pytestmark = pytest.mark.vault

FIRST_KEY = "e2e-vault-key-one-3c9f-not-real"
ROTATED_KEY = "e2e-vault-key-two-81d0-not-real"

CONFIG = """
[server]
socket = "{socket}"

[refresh]
interval = "1h"

[log]
format = "json"
level = "debug"

[sources.bao]
type = "vault"
url = "URL"
mount = "secret"
kv_version = 2

[sources.bao.auth]
method = "approle"
role_id_file = "role-id"
secret_id_file = "secret-id"
remove_secret_id_file_after_reading = true

[environments.sandbox]
source = "bao"
secret = "PATH"
"""


def test_vault_key_is_rotated_on_sighup(
    openbao: OpenBao, start_daemon: Callable[..., Daemon]
) -> None:
    """Sign with the KV version loaded at startup; a new version and SIGHUP rotate the key."""
    path = f"smileid/{openbao.unique('e2e')}/sandbox"
    openbao.kv2_put(path, {"api_key": FIRST_KEY, "partner_id": "085"})
    policy = openbao.policy(
        f'path "secret/data/{path}" {{ capabilities = ["read"] }}\n'
        f'path "secret/metadata/{path}" {{ capabilities = ["read"] }}\n'
    )
    _role, role_id, secret_id = openbao.approle([policy], token_ttl="1h")
    daemon = start_daemon(
        CONFIG.replace("URL", openbao.url).replace("PATH", path),
        files={"role-id": role_id, "secret-id": secret_id},
    )

    login = daemon.wait_for_event("vault.authenticated", source="bao")
    first = daemon.client().sign("sandbox")
    openbao.kv2_put(path, {"api_key": ROTATED_KEY, "partner_id": "085"})
    daemon.signal(signal.SIGHUP)
    rotated = daemon.wait_for_event("key.rotated", environment="sandbox")
    second = daemon.client().sign("sandbox")

    assert "approle" == login["auth_method"]
    assert not (daemon.config_path.parent / "secret-id").exists()
    assert ("1", "085") == (first["key_version"], first["partner_id"])
    assert expected_signature(FIRST_KEY, first["timestamp"], "085") == first["signature"]
    assert ("1", "2") == (rotated["old_version"], rotated["new_version"])
    assert "2" == second["key_version"]
    assert expected_signature(ROTATED_KEY, second["timestamp"], "085") == second["signature"]
    daemon.assert_no_secret_in_logs([FIRST_KEY, ROTATED_KEY, role_id, secret_id])
