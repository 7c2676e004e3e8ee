"""Who is on the other end of a connection: SO_PEERCRED, then /proc for groups and executable.

Read once per connection, at accept. The kernel's credentials (pid, uid, gid) are exact. The
supplementary groups and the executable come from ``/proc/<pid>``, which could name another
process if the peer exited and its pid was reused; so they are trusted only when the process
is proven to be the same afterwards: with a pidfd from SO_PEERPIDFD (Linux 6.5+), which pins
the very process that connected, or else by its start time read before and after.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
from dataclasses import dataclass, field
from typing import Any

_UCRED = struct.Struct("3i")
SO_PEERPIDFD = getattr(socket, "SO_PEERPIDFD", 77)  # Linux 6.5+; Python 3.11 lacks the name


@dataclass(frozen=True, slots=True)
class Peer:
    pid: int
    uid: int
    gid: int
    groups: frozenset[int] = field(default=frozenset())
    exe: str | None = None  # None when it could not be read or trusted

    def log_fields(self) -> dict[str, Any]:
        return {
            "peer_pid": self.pid,
            "peer_uid": self.uid,
            "peer_gid": self.gid,
            "peer_exe": self.exe,
        }


UNKNOWN_PEER = Peer(pid=0, uid=-1, gid=-1)


def read_peer_credentials(sock: Any) -> Peer:
    """The kernel's record of the connecting process, plus what /proc can prove about it."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    except (OSError, AttributeError):
        return UNKNOWN_PEER
    pid, uid, gid = _UCRED.unpack(raw)
    groups, exe = _proc_details(sock, pid)
    return Peer(pid=pid, uid=uid, gid=gid, groups=groups, exe=exe)


def _proc_details(sock: Any, pid: int) -> tuple[frozenset[int], str | None]:
    if pid <= 0:
        return frozenset(), None
    pidfd = _peer_pidfd(sock)
    try:
        started = _start_time(pid)
        groups = _groups(pid)
        exe = os.readlink(f"/proc/{pid}/exe")
        if not _same_process(pid, pidfd, started):
            return frozenset(), None
        return groups, exe
    except (OSError, ValueError):
        return frozenset(), None
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _peer_pidfd(sock: Any) -> int | None:
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD, 4)
    except (OSError, AttributeError):
        return None
    fd: int = struct.unpack("i", raw)[0]
    return fd if fd >= 0 else None


def _same_process(pid: int, pidfd: int | None, started: int) -> bool:
    if pidfd is not None:
        try:
            signal.pidfd_send_signal(pidfd, 0)
        except ProcessLookupError:
            return False  # it exited: /proc/<pid> may already be someone else
        except PermissionError:
            pass  # alive, just not ours to signal
        return True
    with contextlib.suppress(OSError, ValueError):
        return _start_time(pid) == started
    return False


def _start_time(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as stat:
        data = stat.read()
    # comm (field 2) may contain spaces and parentheses: split after its last ")".
    fields = data[data.rindex(b")") + 2 :].split()
    return int(fields[19])  # field 22, starttime


def _groups(pid: int) -> frozenset[int]:
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
        for line in status:
            if line.startswith("Groups:"):
                return frozenset(int(g) for g in line.split()[1:])
    return frozenset()
