"""Which access rules hold for a client in another container: warnings said at start.

A client in another PID namespace (another container; a pod without ``shareProcessNamespace``
or ``hostPID``) connects with no pid the daemon can see: ``SO_PEERCRED`` gives pid 0, so there
is no ``/proc/<pid>`` to read. What the kernel copies at ``connect()`` still holds: the uid and
primary gid (``SO_PEERCRED``) and the supplementary groups (``SO_PEERGROUPS``, Linux 4.13+),
translated into the daemon's user namespace. What comes from ``/proc`` does not: the
executable always, the supplementary groups on older kernels. Such rules fail closed (the
client is refused), so the daemon says so when a policy relies on them.
"""

from __future__ import annotations

import socket

from sidkeyd.config import Config
from sidkeyd.peer import peer_groups
from sidkeyd.policy import AccessPolicy

EXECUTABLES_ACROSS_CONTAINERS = (
    "executables are read from /proc/<pid>, which a client in another PID namespace (another "
    "container) does not have: it connects as pid 0 and is refused; only uid and gid rules "
    "hold across containers (docs/security.md)"
)
GROUPS_WITHOUT_PEERGROUPS = (
    "this kernel has no SO_PEERGROUPS, so supplementary groups are read from /proc/<pid>: a "
    "client in another container matches by its uid or primary gid only (docs/security.md)"
)

OVERFLOW_ID = 65534  # what an id that a user namespace does not map reads as (overflowuid)
OVERFLOW_ID_LISTED = (
    "lists id 65534, which every user and group a user namespace does not map reads as: any "
    "such client in another container matches it (docs/security.md)"
)
GID_0_LISTED = (
    "lists gid 0, which a container started with --user UID and no group runs with: every "
    "such client matches it (docs/security.md)"
)


def namespace_warnings(config: Config, *, kernel_peer_groups: bool | None = None) -> list[str]:
    """One warning per policy whose rules a client in another container cannot pass."""
    if kernel_peer_groups is None:
        kernel_peer_groups = kernel_has_peer_groups()
    warnings = []
    for where, policy in _policies(config):
        if policy.executables:
            warnings.append(f"{where}: {EXECUTABLES_ACROSS_CONTAINERS}")
        if policy.gids and not kernel_peer_groups:
            warnings.append(f"{where}: {GROUPS_WITHOUT_PEERGROUPS}")
        if OVERFLOW_ID in policy.uids | policy.gids:
            warnings.append(f"{where}: {OVERFLOW_ID_LISTED}")
        if 0 in policy.gids:
            warnings.append(f"{where}: {GID_0_LISTED}")
    return warnings


def kernel_has_peer_groups() -> bool:
    """Whether this kernel answers SO_PEERGROUPS (Linux 4.13+), asked on a socket pair."""
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with left, right:
        return peer_groups(left) is not None


def _policies(config: Config) -> list[tuple[str, AccessPolicy]]:
    policies = [
        (f"environments.{name}.allow", env.allow)
        for name, env in config.environments.items()
        if env.allow is not None
    ]
    policies.append(("admin", config.admin))
    if config.metrics.readers is not None:
        policies.append(("metrics.readers", config.metrics.readers))
    return policies
