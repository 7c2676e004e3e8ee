"""AccessPolicy: identity by uid, gid or supplementary group, optionally pinned executables."""

from __future__ import annotations

from sidkeyd.peer import Peer
from sidkeyd.policy import AccessPolicy

PEER = Peer(pid=10, uid=1000, gid=1000, groups=frozenset({27, 100}), exe="/usr/bin/node")


def test_uid_match_permits() -> None:
    """A listed uid is enough."""
    assert AccessPolicy(uids=frozenset({1000})).permits(PEER)


def test_primary_or_supplementary_group_permits() -> None:
    """The primary gid or any supplementary group may match."""
    assert AccessPolicy(gids=frozenset({1000})).permits(PEER)
    assert AccessPolicy(gids=frozenset({27})).permits(PEER)


def test_unlisted_identity_is_refused() -> None:
    """Neither uid nor any group listed: refused."""
    assert not AccessPolicy(uids=frozenset({0}), gids=frozenset({4})).permits(PEER)


def test_executables_narrow_an_identity_match() -> None:
    """With executables listed, a matching uid running another program is refused."""
    policy = AccessPolicy(uids=frozenset({1000}), executables=frozenset({"/usr/bin/php"}))
    assert not policy.permits(PEER)
    assert AccessPolicy(uids=frozenset({1000}), executables=frozenset({"/usr/bin/node"})).permits(
        PEER
    )


def test_executables_only_policy_ignores_identity() -> None:
    """Only executables listed: any uid running that program is allowed."""
    assert AccessPolicy(executables=frozenset({"/usr/bin/node"})).permits(PEER)


def test_unknown_executable_never_matches() -> None:
    """A peer whose exe could not be trusted (None) fails an executables policy."""
    untrusted = Peer(pid=10, uid=1000, gid=1000, exe=None)
    assert not AccessPolicy(executables=frozenset({"/usr/bin/node"})).permits(untrusted)


def test_executables_only_is_a_policy_without_identity_rules() -> None:
    """Only a policy with executables and neither uids nor gids is executables-only."""
    node = frozenset({"/usr/bin/node"})
    assert [True, False, False, False] == [
        AccessPolicy(executables=node).executables_only,
        AccessPolicy(uids=frozenset({1000}), executables=node).executables_only,
        AccessPolicy(gids=frozenset({1000}), executables=node).executables_only,
        AccessPolicy(uids=frozenset({1000})).executables_only,
    ]
