"""``check-config --online`` against a real Secrets Manager (moto) and a key file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from support.daemon import ALL_SECRETS
from support.moto_server import MotoEndpoint

pytestmark = pytest.mark.aws

KEY = "online-check-key-4e2a-not-real"
FILE_KEY = "online-check-file-key-88b1-not-real"


def check(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidkeyd", "check-config", "--online", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_each_secret_is_read_once_and_never_printed(
    moto_endpoint: MotoEndpoint, tmp_path: Path
) -> None:
    """One secret exists, one does not, one key file is fine: exit 1, each line says which."""
    ALL_SECRETS.update([KEY, FILE_KEY])
    name = moto_endpoint.secret_name("online")
    version = moto_endpoint.client().create_secret(Name=name, SecretString=KEY)["VersionId"]
    (tmp_path / "keys.toml").write_text(f'["local"]\napi_key = "{FILE_KEY}"\n')
    config = tmp_path / "c.toml"
    config.write_text(
        f'[sources.aws]\ntype = "aws"\nregion = "us-east-1"\nendpoint_url = "{moto_endpoint.url}"\n'
        'max_attempts = 1\n[sources.local]\ntype = "file"\npath = "keys.toml"\n'
        f'[environments.sandbox]\nsource = "aws"\nsecret = "{name}"\npartner_id = "085"\n'
        '[environments.production]\nsource = "aws"\nsecret = "smileid/none-here"\n'
        'partner_id = "085"\n'
        '[environments.local]\nsource = "local"\nsecret = "local"\npartner_id = "085"\n'
    )
    result = check(config)
    assert 1 == result.returncode
    assert f"  sandbox: ok, key version {version}" in result.stdout
    assert "  production: secret_not_found:" in result.stdout
    assert "  local: ok, key version scrypt:" in result.stdout
    assert [] == [k for k in (KEY, FILE_KEY) if k in result.stdout + result.stderr]


def test_all_readable_is_exit_0(tmp_path: Path) -> None:
    """Every secret read: exit 0."""
    ALL_SECRETS.add(FILE_KEY)
    (tmp_path / "keys.toml").write_text(f'["local"]\napi_key = "{FILE_KEY}"\n')
    config = tmp_path / "c.toml"
    config.write_text(
        '[sources.local]\ntype = "file"\npath = "keys.toml"\n'
        '[environments.local]\nsource = "local"\nsecret = "local"\npartner_id = "085"\n'
    )
    result = check(config)
    assert (0, True) == (result.returncode, FILE_KEY not in result.stdout + result.stderr)


def test_a_version_id_holding_the_key_is_a_problem_that_quotes_neither(
    moto_endpoint: MotoEndpoint, tmp_path: Path
) -> None:
    """A secret created with ClientRequestToken = its key: exit 1, key_version_invalid,
    and the key (its VersionId) is not printed."""
    key = "online-check-token-key-51c9-0000-not-real"
    ALL_SECRETS.add(key)
    name = moto_endpoint.secret_name("online")
    moto_endpoint.client().create_secret(Name=name, SecretString=key, ClientRequestToken=key)
    config = tmp_path / "c.toml"
    config.write_text(
        f'[sources.aws]\ntype = "aws"\nregion = "us-east-1"\nendpoint_url = "{moto_endpoint.url}"\n'
        f'max_attempts = 1\n[environments.sandbox]\nsource = "aws"\nsecret = "{name}"\n'
        'partner_id = "085"\n'
    )
    result = check(config)
    assert (1, True) == (result.returncode, "  sandbox: key_version_invalid:" in result.stdout)
    assert key not in result.stdout + result.stderr
