"""Who may do what: per-environment ``allow`` policies and the ``[admin]`` policy. Pure."""

from __future__ import annotations

from dataclasses import dataclass, field

from sidkeyd.peer import Peer


@dataclass(frozen=True)
class AccessPolicy:
    """A peer is permitted when its identity matches and, if listed, its executable does.

    Identity: the uid is in ``uids``, or the primary gid or a supplementary group is in
    ``gids``. With neither listed, any identity matches (an ``executables``-only policy).
    ``executables`` are resolved absolute paths; an unreadable or untrusted exe never matches.
    The executable is what ``/proc/<pid>/exe`` says, which the peer controls (it may exec an
    allowed binary after connecting): it narrows an identity rule, it does not replace one.
    """

    uids: frozenset[int] = field(default=frozenset())
    gids: frozenset[int] = field(default=frozenset())
    executables: frozenset[str] = field(default=frozenset())

    @property
    def executables_only(self) -> bool:
        """No identity rule: every uid that can open the socket and claim the exe passes."""
        return bool(self.executables) and not self.uids and not self.gids

    def permits(self, peer: Peer) -> bool:
        identity = (not self.uids and not self.gids) or (
            peer.uid in self.uids or peer.gid in self.gids or not self.gids.isdisjoint(peer.groups)
        )
        if not identity:
            return False
        return not self.executables or peer.exe in self.executables
