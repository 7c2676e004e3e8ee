"""namespace_warnings(): the rules a client in another container cannot pass, said at start."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

from sidkeyd.config import Config
from sidkeyd.config_loader import parse_config
from sidkeyd.namespaces import kernel_has_peer_groups, namespace_warnings

BASE = """
[sources.local]
type = "file"
path = "keys.toml"

[environments.sandbox]
source = "local"
secret = "smileid/sandbox"
"""


def parse(text: str) -> Config:
    return parse_config(tomllib.loads(BASE + text), base_dir=Path("/etc/sidkeyd"))


def test_executables_rule_is_said_to_fail_across_containers() -> None:
    """An [allow] with executables (even beside a uid) gets the PID-namespace warning."""
    config = parse(
        f'[environments.sandbox.allow]\nusers = [20001]\nexecutables = ["{sys.executable}"]\n'
    )
    [message] = namespace_warnings(config, kernel_peer_groups=True)
    assert message.startswith("environments.sandbox.allow: executables are read from /proc")
    assert "connects as pid 0 and is refused" in message


def test_uid_and_group_rules_hold_across_containers_on_a_kernel_with_peer_groups() -> None:
    """uids and gids come from SO_PEERCRED and SO_PEERGROUPS: nothing to warn about."""
    config = parse("[environments.sandbox.allow]\nusers = [20001]\ngroups = [10010]\n")
    assert [] == namespace_warnings(config, kernel_peer_groups=True)


def test_group_rule_is_warned_about_where_the_kernel_lacks_peer_groups() -> None:
    """Before Linux 4.13 supplementary groups come from /proc, which another container lacks."""
    config = parse("[environments.sandbox.allow]\ngroups = [10010]\n")
    [message] = namespace_warnings(config, kernel_peer_groups=False)
    assert message.startswith("environments.sandbox.allow: this kernel has no SO_PEERGROUPS")


def test_admin_and_metrics_readers_are_checked_too() -> None:
    """[admin] and [metrics.readers] decide across containers as [allow] does."""
    config = parse(
        f'[admin]\nuids = [0]\nexecutables = ["{sys.executable}"]\n'
        f'[metrics.readers]\nuids = [1]\nexecutables = ["{sys.executable}"]\n'
    )
    assert ["admin", "metrics.readers"] == [
        w.split(":")[0] for w in namespace_warnings(config, kernel_peer_groups=True)
    ]


def test_this_kernel_answers_peer_groups() -> None:
    """The probe on a socket pair finds SO_PEERGROUPS on the kernels CI runs (4.13+)."""
    assert kernel_has_peer_groups()


def test_the_overflow_id_listed_is_warned_about() -> None:
    """65534 (nobody, nogroup) is what every unmapped id reads as: any such client has it."""
    config = parse("[environments.sandbox.allow]\nuids = [65534]\n[admin]\ngroups = [65534]\n")
    warnings = namespace_warnings(config, kernel_peer_groups=True)
    assert ["environments.sandbox.allow", "admin"] == [w.split(":")[0] for w in warnings]
    assert all("lists id 65534" in w for w in warnings)


def test_gid_0_listed_is_warned_about() -> None:
    """A client container run as --user 20001 with no group has gid 0: a gid 0 rule takes it."""
    config = parse("[environments.sandbox.allow]\ngids = [0]\n")
    [message] = namespace_warnings(config, kernel_peer_groups=True)
    assert message.startswith("environments.sandbox.allow: lists gid 0")
