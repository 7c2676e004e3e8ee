"""Peer credentials: what the kernel recorded at connect(), not what /proc says later."""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from sidkeyd.peer import Peer, read_peer_credentials
from support.daemon import short_socket_dir

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="setgroups needs root")


@contextmanager
def connection_from_exited_child(groups: list[int]) -> Iterator[tuple[socket.socket, int]]:
    """A child sets its groups, connects, exits and is reaped; then the listener accepts.

    By the time the daemon side reads the peer, /proc/<pid> is gone.
    """
    path = short_socket_dir() / "peer.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen(1)
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            code = 1
            try:
                os.setgroups(groups)
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                    client.connect(str(path))
                    code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert 0 == os.waitstatus_to_exitcode(status)
        assert not os.path.exists(f"/proc/{pid}")
        connection, _ = listener.accept()
        with connection:
            yield connection, pid


@needs_root
def test_groups_come_from_the_kernel_even_after_the_peer_exited() -> None:
    """SO_PEERGROUPS gives the groups the child had at connect(), with /proc already gone."""
    with connection_from_exited_child([4242, 4343]) as (connection, pid):
        peer = read_peer_credentials(connection)
    assert (pid, frozenset({4242, 4343}), None) == (peer.pid, peer.groups, peer.exe)


@needs_root
def test_more_groups_than_a_python_getsockopt_buffer_holds() -> None:
    """300 groups do not fit socket.getsockopt's 1024 bytes: the retry with room gets them all."""
    groups = list(range(20000, 20300))
    with connection_from_exited_child(groups) as (connection, _):
        peer = read_peer_credentials(connection)
    assert frozenset(groups) == peer.groups


class WithoutPeerGroups:
    """A socket on a kernel older than 4.13: SO_PEERGROUPS is an unknown option."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def getsockopt(self, level: int, option: int, buflen: int) -> Any:
        if option == 59:
            raise OSError(errno.ENOPROTOOPT, "Protocol not available")
        return self._sock.getsockopt(level, option, buflen)

    def fileno(self) -> int:
        return self._sock.fileno()


def test_without_so_peergroups_groups_come_from_proc() -> None:
    """Older kernels: the live peer's groups are read from /proc/<pid>/status."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours, theirs:
        peer = read_peer_credentials(WithoutPeerGroups(ours))
    assert (os.getpid(), frozenset(os.getgroups())) == (peer.pid, peer.groups)
    assert os.path.realpath(f"/proc/{os.getpid()}/exe") == peer.exe


def test_audit_fields_say_the_executable_is_unverified() -> None:
    """peer_exe is a claim, and every audit line says so beside it."""
    fields = Peer(pid=10, uid=1000, gid=1000, exe="/usr/bin/node").log_fields()
    assert ("/usr/bin/node", False) == (fields["peer_exe"], fields["peer_exe_verified"])
