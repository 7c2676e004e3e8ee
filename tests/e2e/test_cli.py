"""The command line without a running daemon: config checks, exit codes, imports."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from support.daemon import short_socket_dir

REPO = Path(__file__).resolve().parents[2]


def sidkeyd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidkeyd", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_check_config_accepts_the_shipped_configs() -> None:
    """Both shipped configs pass; the open environments are warned about, exit 0."""
    for name in ("sidkeyd.dev.toml", "sidkeyd.example.toml"):
        result = sidkeyd("check-config", "-c", str(REPO / "config" / name))
        assert 0 == result.returncode, result.stderr
        assert "warning: environments.sandbox: no [allow] table" in result.stdout


def test_check_config_names_each_problem_and_exits_2(tmp_path: Path) -> None:
    """Every problem is printed with its TOML key path."""
    config = tmp_path / "bad.toml"
    config.write_text(
        '[server]\nsocket_mode = "0777"\n[refresh]\ninterval = "60"\n'
        '[environments.sandbox]\nsource = "nowhere"\nsecret = "x"\n'
    )
    result = sidkeyd("check-config", "-c", str(config))
    assert 2 == result.returncode
    for key in ("server.socket_mode", "refresh.interval", "environments.sandbox.source"):
        assert key in result.stderr


def test_serve_with_a_bad_config_exits_2_before_binding(tmp_path: Path) -> None:
    """serve refuses a bad config with the same messages and never creates the socket."""
    socket_path = short_socket_dir() / "s.sock"
    config = tmp_path / "bad.toml"
    config.write_text(f'[server]\nsocket = "{socket_path}"\nbogus = 1\n')
    result = sidkeyd("serve", "-c", str(config))
    assert 2 == result.returncode
    assert "server.bogus: unknown key" in result.stderr
    assert not socket_path.exists()


def test_config_path_from_the_environment(tmp_path: Path) -> None:
    """Without -c, SIDKEYD_CONFIG names the file."""
    result = sidkeyd(
        "check-config", env={"SIDKEYD_CONFIG": str(REPO / "config" / "sidkeyd.dev.toml")}
    )
    assert 0 == result.returncode, result.stderr


def test_client_commands_exit_3_when_no_daemon_answers() -> None:
    """A missing socket is exit code 3 with a message naming the path."""
    socket_path = short_socket_dir() / "none.sock"
    result = sidkeyd("sign", "--env", "sandbox", "--socket", str(socket_path))
    assert 3 == result.returncode
    assert str(socket_path) in result.stderr


def test_client_imports_neither_boto3_nor_hvac() -> None:
    """Services that only sign do not pay for the backend libraries."""
    code = (
        "import sys, sidkeyd.client; "
        "print(sorted(m for m in ('boto3', 'botocore', 'hvac', 'structlog') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert "[]" == result.stdout.strip()


def test_help_lists_every_command() -> None:
    """`sidkeyd --help` names the commands the README documents."""
    result = sidkeyd("--help")
    for command in ("serve", "check-config", "sign", "verify", "status", "health", "refresh"):
        assert command in result.stdout


def test_serve_exits_3_when_the_socket_folder_cannot_be_made(tmp_path: Path) -> None:
    """An unusable socket path is a clear daemon.failed line and exit 3, not a traceback."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    keys = tmp_path / "keys.toml"
    keys.write_text('["s"]\napi_key = "k-cli-test"\npartner_id = "1"\n')
    config = tmp_path / "c.toml"
    config.write_text(
        f'[server]\nsocket = "{blocker}/sub/s.sock"\n[sources.f]\ntype = "file"\n'
        f'path = "{keys}"\n[environments.e]\nsource = "f"\nsecret = "s"\n'
    )
    result = sidkeyd("serve", "-c", str(config))
    assert 3 == result.returncode
    assert "daemon.failed" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_check_config_warns_about_an_executables_only_allow(tmp_path: Path) -> None:
    """executables is no identity: check-config says so for an [allow] with nothing else."""
    (tmp_path / "keys.toml").write_text('["x"]\napi_key = "k-cli-exe-only"\n')
    config = tmp_path / "exe-only.toml"
    config.write_text(
        '[sources.local]\ntype = "file"\npath = "keys.toml"\n'
        '[environments.production]\nsource = "local"\nsecret = "x"\n'
        f'[environments.production.allow]\nexecutables = ["{sys.executable}"]\n'
    )
    result = sidkeyd("check-config", "-c", str(config))
    assert 0 == result.returncode, result.stderr
    assert "warning: environments.production.allow: only executables are listed" in result.stdout


def test_a_source_whose_library_is_missing_is_a_config_error_naming_the_extra(
    tmp_path: Path,
) -> None:
    """Without boto3 installed, type = "aws" is a problem naming sidkeyd[aws]; exit 2."""
    config = tmp_path / "c.toml"
    config.write_text(
        '[sources.aws]\ntype = "aws"\nregion = "eu-west-1"\n'
        '[environments.e]\nsource = "aws"\nsecret = "s"\npartner_id = "1"\n'
    )
    # A Python without site-packages sees sidkeyd's sources and the standard library only:
    # as a host where the [aws] extra was left out.
    result = subprocess.run(
        [sys.executable, "-S", "-m", "sidkeyd", "check-config", "-c", str(config)],
        capture_output=True,
        text=True,
        check=False,
        env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"},
    )
    assert 2 == result.returncode
    assert "sources.aws.type" in result.stderr
    assert "pip install 'sidkeyd[aws]'" in result.stderr


def test_check_config_names_the_files_that_do_not_exist(tmp_path: Path) -> None:
    """A key file and an AppRole file that are not there: exit 2, each named by its key."""
    config = tmp_path / "c.toml"
    config.write_text(
        '[sources.local]\ntype = "file"\npath = "nowhere.toml"\n'
        '[sources.bao]\ntype = "vault"\nurl = "https://vault.invalid:8200"\n'
        '[sources.bao.auth]\nmethod = "approle"\nrole_id_file = "no-role-id"\n'
        'secret_id_file = "no-secret-id"\n'
        '[environments.e]\nsource = "local"\nsecret = "s"\npartner_id = "1"\n'
    )
    result = sidkeyd("check-config", "-c", str(config))
    assert 2 == result.returncode
    for key in (
        "sources.local.path",
        "sources.bao.auth.role_id_file",
        "sources.bao.auth.secret_id_file",
    ):
        assert key in result.stderr


def test_options_a_source_type_ignores_and_the_data_prefix_are_problems(tmp_path: Path) -> None:
    """payload on a vault environment, and a KV v2 secret written with data/: both refused."""
    config = tmp_path / "c.toml"
    config.write_text(
        '[sources.bao]\ntype = "vault"\nurl = "https://vault.invalid:8200"\n'
        '[environments.e]\nsource = "bao"\nsecret = "data/smileid/e"\npayload = "plain"\n'
        'partner_id = "1"\n'
    )
    result = sidkeyd("check-config", "-c", str(config))
    assert 2 == result.returncode
    assert "environments.e.payload" in result.stderr
    assert "environments.e.secret" in result.stderr
