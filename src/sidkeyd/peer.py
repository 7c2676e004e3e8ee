"""Who is on the other end of a Unix socket connection (SO_PEERCRED), read once per connection."""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from typing import Any

_UCRED = struct.Struct("3i")


@dataclass(frozen=True, slots=True)
class Peer:
    pid: int
    uid: int
    gid: int

    def log_fields(self) -> dict[str, int]:
        return {"peer_pid": self.pid, "peer_uid": self.uid, "peer_gid": self.gid}


UNKNOWN_PEER = Peer(pid=0, uid=-1, gid=-1)


def read_peer_credentials(sock: Any) -> Peer:
    """The kernel's record of the connecting process; UNKNOWN_PEER where unsupported."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    except (OSError, AttributeError):
        return UNKNOWN_PEER
    pid, uid, gid = _UCRED.unpack(raw)
    return Peer(pid=pid, uid=uid, gid=gid)
