"""Config.warnings(): legal choices that check-config and the daemon's start warn about."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

from sidkeyd.config import Config
from sidkeyd.config_loader import parse_config

SOURCES = """
[sources.local]
type = "file"
path = "keys.toml"
"""


def environment(name: str, allow: str) -> str:
    return f"""
[environments.{name}]
source = "local"
secret = "smileid/{name}"
partner_id = "085"
{allow}
"""


def parse(text: str) -> Config:
    return parse_config(tomllib.loads(SOURCES + text), base_dir=Path("/etc/sidkeyd"))


EXECUTABLES = f'executables = ["{sys.executable}"]'


def test_executables_only_allow_is_warned_about() -> None:
    """An [allow] with executables and no identity rule gets a warning naming it."""
    config = parse(environment("production", f"[environments.production.allow]\n{EXECUTABLES}"))
    [message] = config.warnings()
    assert message.startswith("environments.production.allow: only executables are listed")


def test_executables_beside_an_identity_rule_are_not_warned_about() -> None:
    """executables narrowing users or groups is the intended use: no warning."""
    config = parse(
        environment(
            "production", f'[environments.production.allow]\nusers = ["root"]\n{EXECUTABLES}'
        )
        + environment("staging", f'[environments.staging.allow]\ngroups = ["root"]\n{EXECUTABLES}')
    )
    assert [] == config.warnings()


def test_executables_only_admin_is_warned_about() -> None:
    """[admin] with only executables would let any socket user force refreshes."""
    config = parse(
        environment("sandbox", '[environments.sandbox.allow]\nusers = ["root"]')
        + f"[admin]\n{EXECUTABLES}\n"
    )
    assert [True] == [w.startswith("admin: only executables are listed") for w in config.warnings()]
