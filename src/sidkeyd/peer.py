"""Who is on the other end of a connection: what the kernel recorded at ``connect()``.

Read once per connection, at accept. The pid, uid and primary gid come from SO_PEERCRED and
the supplementary groups from SO_PEERGROUPS (Linux 4.13+): both are the kernel's copy of the
credentials the client had when it connected, so they cannot be forged and do not race a pid
reuse. Nothing authoritative exists for the executable; it, and the groups on kernels without
SO_PEERGROUPS, are read from ``/proc/<pid>``, which could name another process if the peer
exited and its pid was reused. They are kept only when the process is proven to be the same
afterwards: with a pidfd from SO_PEERPIDFD (Linux 6.5+), which pins the very process that
connected, or else by its start time read before and after (which cannot see a reuse that
happened before the first read). Even then the executable is only what the peer claims: it may
have exec'd since connecting, or handed its socket to a child (docs/security.md).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

_UCRED = struct.Struct("3i")
SO_PEERPIDFD = getattr(socket, "SO_PEERPIDFD", 77)  # Linux 6.5+; Python 3.11 lacks the name
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux 4.13+; Python 3.11 lacks the name
NGROUPS_MAX = 65536
_GID_SIZE = ctypes.sizeof(ctypes.c_uint)  # gid_t is a 32-bit unsigned int on Linux
_PYTHON_BUFLEN_MAX = 1024  # socket.getsockopt refuses larger buffers: 256 groups


@dataclass(frozen=True, slots=True)
class Peer:
    pid: int
    uid: int
    gid: int
    groups: frozenset[int] = field(default=frozenset())
    exe: str | None = None  # None when it could not be read or trusted
    _fields: Mapping[str, Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Built once per connection: every audit line of the connection spreads it.
        # peer_exe is what /proc said; a peer can make it name a binary it did not run
        # (exec after connect, fd passing, LD_PRELOAD), so the audit line says so.
        fields = {
            "peer_pid": self.pid,
            "peer_uid": self.uid,
            "peer_gid": self.gid,
            "peer_exe": self.exe,
            "peer_exe_verified": False,
        }
        object.__setattr__(self, "_fields", MappingProxyType(fields))

    def log_fields(self) -> Mapping[str, Any]:
        return self._fields


UNKNOWN_PEER = Peer(pid=0, uid=-1, gid=-1)


def read_peer_credentials(sock: Any) -> Peer:
    """The kernel's record of the connecting process, plus what /proc can prove about it."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    except (OSError, AttributeError):
        return UNKNOWN_PEER
    pid, uid, gid = _UCRED.unpack(raw)
    kernel_groups = peer_groups(sock)
    proc_groups, exe = _proc_details(sock, pid, read_groups=kernel_groups is None)
    groups = proc_groups if kernel_groups is None else kernel_groups
    return Peer(pid=pid, uid=uid, gid=gid, groups=groups, exe=exe)


def peer_groups(sock: Any) -> frozenset[int] | None:
    """The supplementary groups at connect time (SO_PEERGROUPS), or None if the kernel lacks it."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, _PYTHON_BUFLEN_MAX)
    except AttributeError:
        return None
    except OSError as exc:
        if exc.errno != errno.ERANGE:
            return None  # ENOPROTOOPT before 4.13, ENODATA without credentials
        raw = _large_peer_groups(sock.fileno())
        if raw is None:
            return None
    count = len(raw) // _GID_SIZE
    return frozenset(struct.unpack(f"{count}I", raw[: count * _GID_SIZE]))


def _large_peer_groups(fd: int) -> bytes | None:
    """More than 256 groups: libc's getsockopt, which says how much room the kernel needs."""
    libc = ctypes.CDLL(None, use_errno=True)
    size = _PYTHON_BUFLEN_MAX * 2
    while size <= NGROUPS_MAX * _GID_SIZE:
        buffer = ctypes.create_string_buffer(size)
        length = ctypes.c_uint(size)
        result = libc.getsockopt(fd, socket.SOL_SOCKET, SO_PEERGROUPS, buffer, ctypes.byref(length))
        if result == 0:
            return buffer.raw[: length.value]
        if ctypes.get_errno() != errno.ERANGE:
            return None
        size = max(size * 2, length.value)  # on ERANGE the kernel stores the size it needs
    return None


def _proc_details(sock: Any, pid: int, *, read_groups: bool) -> tuple[frozenset[int], str | None]:
    if pid <= 0:
        return frozenset(), None
    pidfd = _peer_pidfd(sock)
    try:
        started = _start_time(pid)
        groups = _groups(pid) if read_groups else frozenset()
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
    """Only where the kernel lacks SO_PEERGROUPS: /proc is the best there is, and it races."""
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
        for line in status:
            if line.startswith("Groups:"):
                return frozenset(int(g) for g in line.split()[1:])
    return frozenset()
