"""Config validation: defaults, units, paths, and every problem named with its key path."""

from __future__ import annotations

import os
import tomllib
from datetime import timedelta
from pathlib import Path

import pytest

from sidkeyd.config import AwsSourceConfig, FileSourceConfig, VaultSourceConfig
from sidkeyd.config_loader import load_config, parse_config
from sidkeyd.errors import ConfigError

MINIMAL = """
[sources.local]
type = "file"
path = "keys.toml"

[environments.sandbox]
source = "local"
secret = "smileid/sandbox"
partner_id = "085"
"""

BASE = Path("/etc/sidkeyd")


def parse(text: str):
    return parse_config(tomllib.loads(text), base_dir=BASE)


def problems(text: str) -> dict[str, str]:
    with pytest.raises(ConfigError) as caught:
        parse(text)
    return {p.key: p.reason for p in caught.value.problems}


def test_minimal_config_gets_the_documented_defaults() -> None:
    """Socket, mode, skew, interval and log format default as documented."""
    config = parse(MINIMAL)
    assert (Path("/run/sidkeyd/sidkeyd.sock"), 0o660) == (
        config.server.socket,
        config.server.socket_mode,
    )
    assert (timedelta(minutes=5), timedelta(seconds=60), 0.1, "json") == (
        config.server.timestamp_skew,
        config.refresh.interval,
        config.refresh.jitter,
        config.log.format,
    )
    assert "085" == config.environments["sandbox"].partner_id


def test_relative_paths_are_relative_to_the_config_folder() -> None:
    """A relative socket or key file path resolves against the config file's folder."""
    config = parse(MINIMAL + '\n[server]\nsocket = "../run/s.sock"\n')
    source = config.sources["local"]
    assert isinstance(source, FileSourceConfig)
    assert (Path("/etc/run/s.sock"), Path("/etc/sidkeyd/keys.toml")) == (
        config.server.socket,
        source.path,
    )


def test_environment_overrides_refresh_settings() -> None:
    """interval set on an environment wins over [refresh]; other settings are inherited."""
    config = parse(
        MINIMAL.replace('partner_id = "085"', 'partner_id = "085"\ninterval = "10s"')
        + '\n[refresh]\ninterval = "2m"\nmax_stale = "1h"\n'
    )
    refresh = config.environments["sandbox"].refresh
    assert (timedelta(seconds=10), timedelta(hours=1)) == (refresh.interval, refresh.max_stale)


def test_every_problem_is_reported_with_its_key_path() -> None:
    """Several mistakes give several problems, each naming the TOML key."""
    found = problems(
        MINIMAL.replace('partner_id = "085"', "partner_id = 85")
        + """
[server]
socket_mode = "0666"
timestamp_skew = "300"
colour = "blue"

[refresh]
jitter = 2
"""
    )
    assert {
        "environments.sandbox.partner_id",
        "server.socket_mode",
        "server.timestamp_skew",
        "server.colour",
        "refresh.jitter",
    } == set(found)
    assert "unknown key" == found["server.colour"]
    assert "085" in found["environments.sandbox.partner_id"]


def test_environment_must_name_a_defined_source() -> None:
    """A typo in `source` is caught at load."""
    found = problems(MINIMAL.replace('source = "local"', 'source = "locl"'))
    assert "no source named 'locl' in [sources]" == found["environments.sandbox.source"]


def test_environments_are_required() -> None:
    """A config with no environment cannot serve anything."""
    assert "environments" in problems('[sources.local]\ntype = "file"\npath = "k"\n')


def test_unknown_source_type_is_named() -> None:
    """type must be file, aws or vault."""
    found = problems(MINIMAL.replace('type = "file"', 'type = "gcp"'))
    assert found["sources.local.type"].startswith("must be one of file, aws, vault")


def test_a_long_table_name_is_cut_short_in_the_key_paths_of_its_problems() -> None:
    """A source named with 20000 characters and 2000 unknown keys under it: every key path
    names it cut short, so the problems stay a few hundred KB (uncut: 40 MB of key paths,
    gigabytes from a file of a few hundred KB)."""
    name = "x" * 20000
    table = f'[sources."{name}"]\ntype = "file"\npath = "k.toml"\n'
    table += "".join(f"unknown{i} = 1\n" for i in range(2000))
    found = problems(MINIMAL + table)
    cut = "sources." + "x" * 128 + "...(truncated)"
    assert (2001, "unknown key") == (len(found), found[f"{cut}.unknown7"])
    assert 2001 * 200 > sum(len(key) for key in found)


def test_a_partner_id_that_is_not_digits_is_named_without_its_value() -> None:
    """A key pasted as partner_id (served in every answer and in status): refused, and the
    problem does not repeat it."""
    pasted = "0c5b1a8e-6f3d-4b7e-9a21-5d8f0e4c3b2a"
    found = problems(MINIMAL.replace('partner_id = "085"', f'partner_id = "{pasted}"'))
    assert (
        'must be a Smile ID partner id: digits, such as "085"'
        == found["environments.sandbox.partner_id"]
    )
    assert pasted not in str(found)


def test_aws_source_fields() -> None:
    """The AWS source shape of the docs loads, with ARN secrets and version stages."""
    config = parse(
        """
[sources.aws]
type = "aws"
region = "eu-west-1"
endpoint_url = "http://127.0.0.1:5000"
fallback_regions = ["eu-central-1"]

[environments.production]
source = "aws"
secret = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:smileid/production-AbCdEf"
version_stage = "AWSPREVIOUS"
"""
    )
    source = config.sources["aws"]
    assert isinstance(source, AwsSourceConfig)
    assert ("eu-west-1", ("eu-central-1",)) == (source.region, source.fallback_regions)
    assert "AWSPREVIOUS" == config.environments["production"].version_stage


def test_vault_source_fields() -> None:
    """The Vault source shape of the docs loads with AppRole files."""
    config = parse(
        """
[sources.vault]
type = "vault"
url = "https://vault.internal:8200"
mount = "secret"
kv_version = 2
[sources.vault.auth]
method = "approle"
role_id_file = "/etc/sidkeyd/vault-role-id"
secret_id_file = "/etc/sidkeyd/vault-secret-id"

[environments.production]
source = "vault"
secret = "smileid/production"
"""
    )
    source = config.sources["vault"]
    assert isinstance(source, VaultSourceConfig)
    assert ("approle", Path("/etc/sidkeyd/vault-secret-id"), 2) == (
        source.auth.method,
        source.auth.secret_id_file,
        source.kv_version,
    )


def test_approle_without_files_is_a_problem() -> None:
    """AppRole needs both files."""
    found = problems(
        """
[sources.vault]
type = "vault"
url = "http://127.0.0.1:8200"
[sources.vault.auth]
method = "approle"
[environments.production]
source = "vault"
secret = "smileid/production"
"""
    )
    assert {"sources.vault.auth.role_id_file", "sources.vault.auth.secret_id_file"} <= set(found)


def test_version_stage_only_for_aws() -> None:
    """A Secrets Manager option on a file source is an error, not silently ignored."""
    found = problems(MINIMAL + 'version_stage = "AWSCURRENT"\n')
    assert "only an aws source has version stages" == found["environments.sandbox.version_stage"]


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    """A missing file and a file that is not TOML are both ConfigErrors naming the file."""
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[server\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(broken)


def test_shipped_configs_are_valid() -> None:
    """config/sidkeyd.dev.toml and config/sidkeyd.example.toml load without problems."""
    folder = Path(__file__).resolve().parents[2] / "config"
    for name in ("sidkeyd.dev.toml", "sidkeyd.example.toml"):
        assert load_config(folder / name).environments


def test_allow_policy_resolves_names_at_load() -> None:
    """users and groups become uids and gids; executables are resolved real paths."""
    import grp
    import os
    import pwd
    import sys

    config = parse(
        MINIMAL
        + f"""
[environments.sandbox.allow]
users = ["nobody"]
groups = ["nogroup"]
uids = [1234]
executables = ["{sys.executable}"]
"""
    )
    policy = config.environments["sandbox"].allow
    assert policy is not None
    assert frozenset({1234, pwd.getpwnam("nobody").pw_uid}) == policy.uids
    assert frozenset({grp.getgrnam("nogroup").gr_gid}) == policy.gids
    assert frozenset({os.path.realpath(sys.executable)}) == policy.executables


def test_unknown_user_group_or_relative_executable_is_a_config_error() -> None:
    """Names that do not resolve are errors at load, not surprises at request time."""
    found = problems(
        MINIMAL
        + """
[environments.sandbox.allow]
users = ["no-such-user-sidkeyd"]
groups = ["no-such-group-sidkeyd"]
executables = ["bin/node"]
"""
    )
    assert {
        "environments.sandbox.allow.users",
        "environments.sandbox.allow.groups",
        "environments.sandbox.allow.executables",
    } == set(found)


def test_empty_allow_table_is_refused() -> None:
    """An [allow] table that lists nobody is almost certainly a mistake."""
    found = problems(MINIMAL + "\n[environments.sandbox.allow]\n")
    assert "environments.sandbox.allow" in found


def test_admin_defaults_to_root_and_the_daemon_uid() -> None:
    """Without [admin], root and the daemon's own uid are admins."""
    import os

    assert frozenset({0, os.getuid()}) == parse(MINIMAL).admin.uids


def test_open_environments_are_warned_about() -> None:
    """check-config's warnings name each environment without [allow]."""
    warnings = parse(MINIMAL).warnings()
    assert 1 == len(warnings)
    assert warnings[0].startswith("environments.sandbox")


def test_transport_limits_get_their_documented_defaults() -> None:
    """write_timeout 10s, max_connections_per_uid 64 and backlog 1024 when left out."""
    server = parse(MINIMAL).server
    assert (timedelta(seconds=10), 64, 1024) == (
        server.write_timeout,
        server.max_connections_per_uid,
        server.backlog,
    )


def test_transport_limits_take_valid_values() -> None:
    """Each new [server] limit is read from the file."""
    server = parse(
        MINIMAL
        + '[server]\nwrite_timeout = "1500ms"\nmax_connections = 20\n'
        + "max_connections_per_uid = 5\nbacklog = 4096\n"
    ).server
    assert (timedelta(milliseconds=1500), 5, 4096) == (
        server.write_timeout,
        server.max_connections_per_uid,
        server.backlog,
    )


def test_the_per_uid_default_is_capped_by_max_connections() -> None:
    """With max_connections under 64 and no per-uid limit, the per-uid limit is the total."""
    assert 20 == parse(MINIMAL + "[server]\nmax_connections = 20\n").server.max_connections_per_uid


def test_invalid_transport_limits_are_named_with_their_paths() -> None:
    """A per-uid limit over the total, a tiny write_timeout and a zero backlog are problems."""
    found = problems(
        MINIMAL
        + '[server]\nwrite_timeout = "10ms"\nmax_connections = 20\n'
        + "max_connections_per_uid = 21\nbacklog = 0\n"
    )
    assert {
        "server.write_timeout": "must be at least 0.1s",
        "server.max_connections_per_uid": "must not be over max_connections (20)",
        "server.backlog": "must be between 1 and 65535, not 0",
    } == {key: reason for key, reason in found.items() if key.startswith("server.")}


def test_a_typo_gets_a_did_you_mean() -> None:
    """An unknown key close to a known one names it."""
    assert (
        "unknown key (did you mean 'interval'?)"
        == problems(MINIMAL + '\n[refresh]\nintervl = "30s"\n')["refresh.intervl"]
    )


def test_an_unquoted_partner_id_with_a_leading_zero_says_to_quote_it(tmp_path: Path) -> None:
    """partner_id = 085 is not TOML; the message says why and what to write, with the line."""
    config = tmp_path / "c.toml"
    config.write_text(MINIMAL.replace('partner_id = "085"', "partner_id = 085"))
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    reason = caught.value.problems[0].reason
    assert 'partner_id must be a quoted string, as partner_id = "085"' in reason
    assert reason.startswith("line ")


def test_metrics_listen_must_be_loopback_unless_allowed() -> None:
    """A non-loopback listen address is refused without allow_remote = true."""
    assert "metrics.listen" in problems(MINIMAL + '\n[metrics]\nlisten = "0.0.0.0:9464"\n')
    allowed = parse(MINIMAL + '\n[metrics]\nlisten = "0.0.0.0:9464"\nallow_remote = true\n')
    assert ("0.0.0.0", 9464) == allowed.metrics.listen


def test_a_config_larger_than_the_bound_is_refused_unread(tmp_path: Path) -> None:
    """A file over MAX_CONFIG_BYTES (a runaway file behind a reload) is one (file) problem."""
    from sidkeyd.config_loader import MAX_CONFIG_BYTES

    path = tmp_path / "sidkeyd.toml"
    path.write_text(MINIMAL + "#" * MAX_CONFIG_BYTES)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert [("(file)", f"{path} is larger than {MAX_CONFIG_BYTES} bytes")] == [
        (p.key, p.reason) for p in caught.value.problems
    ]


def test_a_config_nested_thousands_deep_is_one_file_problem(tmp_path: Path) -> None:
    """tomllib recurses per nesting level: a deep array is a (file) problem, not a
    RecursionError that a reload would answer with a 500 and a traceback."""
    path = tmp_path / "sidkeyd.toml"
    path.write_text(MINIMAL + "\n[x]\na = " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert [("(file)", f"{path} nests values too deeply")] == [
        (p.key, p.reason) for p in caught.value.problems
    ]


def test_a_fifo_as_config_is_refused_without_blocking(tmp_path: Path) -> None:
    """A named pipe with no writer is not a regular file: refused, not waited on."""
    path = tmp_path / "sidkeyd.toml"
    os.mkfifo(path)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert [("(file)", f"{path} is not a regular file")] == [
        (p.key, p.reason) for p in caught.value.problems
    ]


def test_audit_is_off_by_default_and_fails_closed_when_on() -> None:
    """No [audit]: no trail; once on, refuse on failure, fsync every second, 500ms wait."""
    default = parse(MINIMAL).audit
    on = parse(MINIMAL + '\n[audit]\npath = "audit.jsonl"\n').audit
    assert (False, True) == (default.enabled, on.enabled)
    assert (Path("/etc/sidkeyd/audit.jsonl"), "refuse", "interval") == (
        on.path,
        on.on_audit_failure,
        on.fsync,
    )
    assert (timedelta(seconds=1), timedelta(milliseconds=500), timedelta(minutes=5)) == (
        on.fsync_interval,
        on.write_timeout,
        on.checkpoint_interval,
    )


def test_audit_settings_are_read() -> None:
    """stdout, on_audit_failure, fsync and the durations take valid values."""
    audit = parse(
        MINIMAL + '\n[audit]\nstdout = true\non_audit_failure = "continue"\nfsync = "always"\n'
        'write_timeout = "2s"\nfsync_interval = "250ms"\ncheckpoint_interval = "1m"\n'
    ).audit
    assert (True, "continue", "always", timedelta(seconds=2), timedelta(milliseconds=250)) == (
        audit.stdout,
        audit.on_audit_failure,
        audit.fsync,
        audit.write_timeout,
        audit.fsync_interval,
    )
    assert timedelta(minutes=1) == audit.checkpoint_interval


def test_invalid_audit_settings_are_named_with_their_path() -> None:
    """A bad choice, a duration without unit and a too short interval are problems."""
    found = problems(
        MINIMAL + '\n[audit]\npath = "a.jsonl"\nstdout = true\nfsync = "sometimes"\n'
        'write_timeout = "5"\non_audit_failure = "ignore"\ncheckpoint_interval = "10ms"\n'
    )
    assert {
        "audit.fsync", "audit.write_timeout", "audit.on_audit_failure",
        "audit.checkpoint_interval",
    } == set(found)  # fmt: skip


def test_an_audit_file_and_stdout_together_are_one_trail_on_both() -> None:
    """path and stdout = true at once are valid: the file and its copy on stdout."""
    audit = parse(MINIMAL + '\n[audit]\npath = "a.jsonl"\nstdout = true\n').audit
    assert (True, True) == (audit.path is not None, audit.stdout)


def test_socket_group_defaults_to_none() -> None:
    """Without socket_group the socket keeps the daemon's own group."""
    assert None is parse(MINIMAL).server.socket_group


@pytest.mark.parametrize(
    ("written", "expected"),
    [("10010", 10010), ('"10010"', 10010), ('"nogroup"', "nogroup")],
)
def test_socket_group_takes_a_name_or_a_numeric_gid(written: str, expected: str | int) -> None:
    """A gid (integer or digit string) is kept as a number, a name as a name."""
    config = parse(MINIMAL + f"\n[server]\nsocket_group = {written}\n")
    assert expected == config.server.socket_group


@pytest.mark.parametrize("written", ["-1", "4294967295", "true", '""', "[10010]"])
def test_socket_group_that_is_no_name_or_gid_is_named(written: str) -> None:
    """A negative or too large id, a boolean, an empty string or a list: server.socket_group."""
    found = problems(MINIMAL + f"\n[server]\nsocket_group = {written}\n")
    assert "must be a name or a numeric id" in found["server.socket_group"]


def test_allow_users_and_groups_take_numeric_ids_that_no_local_name_has() -> None:
    """A client container's uid and gid need no entry in the daemon's /etc/passwd or group."""
    config = parse(
        MINIMAL
        + """
[environments.sandbox.allow]
users = [20001, "20002", "nobody"]
groups = [20010, "20011"]
"""
    )
    import pwd

    policy = config.environments["sandbox"].allow
    assert policy is not None
    assert frozenset({20001, 20002, pwd.getpwnam("nobody").pw_uid}) == policy.uids
    assert frozenset({20010, 20011}) == policy.gids


def test_allow_ids_out_of_range_are_named_with_their_key() -> None:
    """A negative uid in users and a float in groups are problems naming each key."""
    found = problems(MINIMAL + "\n[environments.sandbox.allow]\nusers = [-5]\ngroups = [1.5]\n")
    assert "must list names or numeric ids" in found["environments.sandbox.allow.users"]
    assert "must list names or numeric ids" in found["environments.sandbox.allow.groups"]


@pytest.mark.parametrize("written", ["4294967295", "18446744073709551616", "-1"])
def test_allow_uids_and_gids_past_a_32_bit_id_are_named_as_users_are(written: str) -> None:
    """uids/gids take the range users/groups take: (uid_t)-1 and beyond is no one's id."""
    allow = f"\n[environments.sandbox.allow]\nuids = [{written}]\ngids = [{written}]\n"
    found = problems(MINIMAL + allow)
    assert "from 0 to 4294967294" in found["environments.sandbox.allow.uids"]
    assert "from 0 to 4294967294" in found["environments.sandbox.allow.gids"]
