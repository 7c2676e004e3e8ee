"""The reload plan: which environments keep, load or drop their key; what needs a restart."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from sidkeyd.config import Config
from sidkeyd.config_loader import parse_config
from sidkeyd.errors import ConfigProblem
from sidkeyd.reload_plan import ReloadOutcome, plan_reload

BASE = """
[server]
socket = "/run/sidkeyd/sidkeyd.sock"

[log]
level = "info"

[sources.local]
type = "file"
path = "keys.toml"

[sources.other]
type = "file"
path = "other.toml"

[environments.sandbox]
source = "local"
secret = "sandbox"
partner_id = "085"

[environments.production]
source = "local"
secret = "production"
partner_id = "085"
"""
STAGING = '\n[environments.staging]\nsource = "other"\nsecret = "staging"\npartner_id = "085"\n'


def config(*edits: tuple[str, str], more: str = "") -> Config:
    """BASE with each (old, new) text replaced once, then ``more`` appended."""
    text = BASE
    for old, new in edits:
        assert old in text
        text = text.replace(old, new, 1)
    return parse_config(tomllib.loads(text + more), base_dir=Path("/etc/sidkeyd"))


SANDBOX = '[environments.sandbox]\nsource = "local"\n'
SERVER = "[server]\n"


def test_an_identical_config_keeps_everything_and_changes_nothing() -> None:
    """Same file: every environment kept, no change listed, nothing refused."""
    plan = plan_reload(config(), config())
    assert (("production", "sandbox"), (), (), False) == (
        plan.keep,
        plan.load,
        plan.changes,
        plan.refused,
    )


def test_an_added_environment_is_loaded_and_the_others_kept() -> None:
    """A new [environments.x] table: x is added (loaded), the two others keep their keys."""
    plan = plan_reload(config(), config(more=STAGING))
    assert (("staging",), ("staging",), ("production", "sandbox")) == (
        plan.added,
        plan.load,
        plan.keep,
    )


def test_a_removed_environment_is_dropped_and_named() -> None:
    """An environment gone from the file is removed, and the changes say so."""
    plan = plan_reload(config(more=STAGING), config())
    assert (("staging",), ("environments.staging: removed, its key dropped",)) == (
        plan.removed,
        plan.changes,
    )


@pytest.mark.parametrize(
    "edit",
    [
        ('secret = "sandbox"', 'secret = "sandbox-v2"'),
        ('source = "local"\nsecret = "sandbox"', 'source = "other"\nsecret = "sandbox"'),
        ('partner_id = "085"', 'partner_id = "086"'),
        (SANDBOX, SANDBOX + 'api_key_field = "key"\n'),
        (SANDBOX, SANDBOX + 'partner_id_field = "pid"\n'),
    ],
    ids=["secret", "source", "partner_id", "api_key_field", "partner_id_field"],
)
def test_a_setting_that_decides_what_is_read_reloads_that_environment(
    edit: tuple[str, str],
) -> None:
    """Secret, source, partner id or payload fields: read again; the other env is kept."""
    plan = plan_reload(config(), config(edit))
    assert (("sandbox",), ("production",)) == (plan.changed, plan.keep)


def test_a_changed_source_reloads_every_environment_that_uses_it() -> None:
    """sources.local's path changes: both its environments are read again."""
    plan = plan_reload(config(), config(('path = "keys.toml"', 'path = "moved.toml"')))
    assert (("local",), ("production", "sandbox"), ()) == (
        plan.sources_changed,
        plan.changed,
        plan.keep,
    )


def test_an_added_and_a_removed_source_are_listed_without_touching_environments() -> None:
    """A source no environment uses comes and goes: environments are all kept."""
    unused = '\n[sources.spare]\ntype = "file"\npath = "spare.toml"\n'
    added = plan_reload(config(), config(more=unused))
    removed = plan_reload(config(more=unused), config())
    assert (("spare",), ("spare",), ("production", "sandbox")) == (
        added.sources_added,
        removed.sources_removed,
        added.keep,
    )


def test_a_policy_change_keeps_the_key() -> None:
    """A new [environments.sandbox.allow] is a policy change; the key stays (kept)."""
    plan = plan_reload(config(), config(more="\n[environments.sandbox.allow]\nuids = [0]\n"))
    assert (("environments.sandbox.allow",), ("production", "sandbox")) == (
        plan.policies,
        plan.keep,
    )


def test_admin_and_metrics_readers_are_policies() -> None:
    """[admin] and [metrics.readers] changes are listed as policies."""
    plan = plan_reload(
        config(), config(more="\n[admin]\nuids = [0, 4242]\n[metrics.readers]\nuids = [7]\n")
    )
    assert ("admin", "metrics.readers") == plan.policies


def test_refresh_settings_are_a_schedule_change_that_keeps_the_key() -> None:
    """A new interval for sandbox: its schedule changes, its key is kept."""
    plan = plan_reload(config(), config((SANDBOX, SANDBOX + 'interval = "5m"\n')))
    assert (("sandbox",), ("production", "sandbox")) == (plan.schedule, plan.keep)


def test_a_global_refresh_change_reaches_every_environment_schedule() -> None:
    """[refresh] interval: every environment's effective refresh changes."""
    plan = plan_reload(config(), config(more='\n[refresh]\ninterval = "2m"\n'))
    assert ("production", "sandbox") == plan.schedule


def test_smileid_settings_are_a_token_change_that_keeps_the_key() -> None:
    """smileid = "sandbox" added: a token change; the key is kept."""
    plan = plan_reload(config(), config((SANDBOX, SANDBOX + 'smileid = "sandbox"\n')))
    assert (("sandbox",), ("production", "sandbox")) == (plan.tokens, plan.keep)


def test_live_server_limits_are_listed_by_key_path() -> None:
    """max_connections and timestamp_skew change live, named by their TOML key path."""
    plan = plan_reload(
        config(), config((SERVER, SERVER + 'max_connections = 10\ntimestamp_skew = "1m"\n'))
    )
    assert (
        ("server.timestamp_skew", "server.max_connections", "server.max_connections_per_uid"),
        False,
    ) == (plan.limits, plan.refused)


def test_the_log_level_change_is_named_with_both_levels() -> None:
    """log.level info -> debug: listed with the old and the new level."""
    plan = plan_reload(config(), config(('level = "info"', 'level = "debug"')))
    assert (("info", "debug"), ("log.level: info -> debug",)) == (plan.log_level, plan.changes)


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (('socket = "/run/sidkeyd/sidkeyd.sock"', 'socket = "/run/x.sock"'), "server.socket"),
        ((SERVER, SERVER + 'socket_mode = "0600"\n'), "server.socket_mode"),
        ((SERVER, SERVER + 'socket_group = "root"\n'), "server.socket_group"),
        ((SERVER, SERVER + "backlog = 16\n"), "server.backlog"),
        ((SERVER, SERVER + "lock_memory = true\n"), "server.lock_memory"),
        (("[log]\n", '[log]\nformat = "console"\n'), "log.format"),
    ],
)
def test_a_setting_fixed_at_start_refuses_the_reload(edit: tuple[str, str], key: str) -> None:
    """Each start-up-only key is named as needing a restart."""
    plan = plan_reload(config(), config(edit))
    assert (True, (ConfigProblem(key, "needs a restart (a reload cannot change it)"),)) == (
        plan.refused,
        plan.restart_required,
    )


def test_the_metrics_listener_needs_a_restart() -> None:
    """[metrics] listen and enabled are start-up settings."""
    plan = plan_reload(
        config(), config(more='\n[metrics]\nenabled = false\nlisten = "127.0.0.1:9"\n')
    )
    assert ["metrics.enabled", "metrics.listen"] == [p.key for p in plan.restart_required]


def test_the_audit_trail_needs_a_restart() -> None:
    """[audit] is opened once (its chain with it): turning it on or moving it is refused."""
    plan = plan_reload(config(), config(more='\n[audit]\npath = "/var/log/a.jsonl"\n'))
    assert ["audit.path"] == [p.key for p in plan.restart_required]


def test_every_restart_problem_is_named_at_once() -> None:
    """Two start-up keys changed: both are named, and other changes are still planned."""
    plan = plan_reload(
        config(),
        config(
            ('socket = "/run/sidkeyd/sidkeyd.sock"', 'socket = "/run/x.sock"\nbacklog = 8'),
            more=STAGING,
        ),
    )
    assert (["server.socket", "server.backlog"], ("staging",)) == (
        [p.key for p in plan.restart_required],
        plan.added,
    )


def test_the_summary_names_keys_and_environments_only() -> None:
    """The summary (logged and answered) carries names and key paths, no setting values."""
    plan = plan_reload(config(), config(('secret = "sandbox"', 'secret = "s3cr3t-name"')))
    summary = plan.summary()
    assert "s3cr3t-name" not in repr(summary)
    assert ["sandbox"] == summary["environments"]["changed"]


def test_a_refused_outcome_answers_in_the_error_shape_with_every_problem() -> None:
    """config_invalid: error code, message and each problem's key and reason."""
    problems = (ConfigProblem("server.max_connections", "must be > 0"), ConfigProblem("a", "b"))
    answer = ReloadOutcome("config_invalid", problems=problems).to_json()
    assert {
        "code": "config_invalid",
        "message": "nothing changed: invalid config, 2 problem(s)",
        "problems": [
            {"key": "server.max_connections", "reason": "must be > 0"},
            {"key": "a", "reason": "b"},
        ],
    } == answer["error"]


def test_a_reload_refused_while_stopping_says_so() -> None:
    """reload_unavailable: the error shape, a message naming the stop, not 'needs a restart'."""
    problem = ConfigProblem("(daemon)", "the daemon is stopping; nothing was applied")
    answer = ReloadOutcome("reload_unavailable", problems=(problem,)).to_json()
    assert ("reload_unavailable", "nothing changed: the daemon is stopping") == (
        answer["error"]["code"],
        answer["error"]["message"],
    )
