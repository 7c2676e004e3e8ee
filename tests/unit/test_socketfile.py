"""Binding the socket: modes, stale files, live daemons, and paths that are unsafe."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from sidkeyd.errors import SocketInUseError, UnsafeSocketPathError
from sidkeyd.socketfile import bind_unix_socket, remove_socket
from support.daemon import short_socket_dir


@pytest.fixture
def folder() -> Path:
    return short_socket_dir()


def test_socket_gets_the_configured_mode(folder: Path) -> None:
    """0660 by default, 0600 when asked."""
    for mode in (0o660, 0o600):
        path = folder / f"s{mode}.sock"
        with bind_unix_socket(path, mode, None):
            assert mode == stat.S_IMODE(path.stat().st_mode)


def test_live_socket_is_refused(folder: Path) -> None:
    """Something answering at the path: SocketInUseError, and the file stays."""
    path = folder / "live.sock"
    with bind_unix_socket(path, 0o600, None), pytest.raises(SocketInUseError):
        bind_unix_socket(path, 0o600, None)
    assert path.exists()


def test_stale_socket_is_replaced(folder: Path) -> None:
    """A socket file with no listener is removed and bound again."""
    path = folder / "stale.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()
    with bind_unix_socket(path, 0o600, None) as sock:
        assert sock.fileno() >= 0


def test_symlink_and_regular_file_are_refused(folder: Path) -> None:
    """Neither a symlink nor a regular file at the path is ever removed."""
    link = folder / "link.sock"
    link.symlink_to(folder / "elsewhere")
    regular = folder / "file.sock"
    regular.write_text("keep")
    for path in (link, regular):
        with pytest.raises(UnsafeSocketPathError):
            bind_unix_socket(path, 0o600, None)
    assert "keep" == regular.read_text()


def test_world_writable_folder_without_sticky_bit_is_refused(folder: Path) -> None:
    """Another user could swap the socket in such a folder."""
    open_folder = folder / "open"
    open_folder.mkdir()
    os.chmod(open_folder, 0o777)
    with pytest.raises(UnsafeSocketPathError, match="writable by every user"):
        bind_unix_socket(open_folder / "s.sock", 0o600, None)


def test_unknown_group_is_refused(folder: Path) -> None:
    """A socket_group that does not exist is an error, not a silent default."""
    with pytest.raises(UnsafeSocketPathError, match="does not exist"):
        bind_unix_socket(folder / "g.sock", 0o660, "no-such-group-sidkeyd")


def test_remove_socket_leaves_a_replacement_alone(folder: Path) -> None:
    """Only our own inode is removed at shutdown."""
    path = folder / "r.sock"
    with bind_unix_socket(path, 0o600, None):
        remove_socket(path, inode=path.stat().st_ino + 1)
        assert path.exists()
        remove_socket(path, inode=path.stat().st_ino)
    assert not path.exists()
