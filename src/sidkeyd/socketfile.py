"""Binding the Unix socket safely: no stale-file guesswork, no window where it is too open."""

from __future__ import annotations

import contextlib
import errno
import grp
import os
import socket
import stat
from pathlib import Path

from sidkeyd.errors import SocketInUseError, UnsafeSocketPathError


def probe(path: Path, timeout: float = 1.0) -> bool:
    """True if something accepts connections at ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            return False
        except OSError as exc:
            if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
                return False
            raise
        return True


def _check_folder(folder: Path) -> None:
    info = folder.stat()
    if info.st_mode & stat.S_IWOTH and not info.st_mode & stat.S_ISVTX:
        raise UnsafeSocketPathError(
            f"{folder} is writable by every user and not sticky: another user could replace "
            "the socket; use a folder such as /run/sidkeyd"
        )


def _clear_stale(path: Path) -> None:
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode):
        raise UnsafeSocketPathError(f"{path} is a symbolic link; refusing to bind through it")
    if not stat.S_ISSOCK(info.st_mode):
        raise UnsafeSocketPathError(f"{path} exists and is not a socket; refusing to replace it")
    if probe(path):
        raise SocketInUseError(f"another process is serving on {path}")
    path.unlink()


def bind_unix_socket(
    path: Path, mode: int, group: str | None, backlog: int = 1024
) -> socket.socket:
    """Bind and listen at ``path`` with ``mode`` and ``group``.

    The socket is created under umask 0177 (owner-only) and only then widened to ``mode``, so
    it is never reachable by more users than configured.
    """
    gid = -1
    if group is not None:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise UnsafeSocketPathError(f"socket group {group!r} does not exist") from None
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    _check_folder(path.parent)
    _clear_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        sock.bind(str(path))
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old_umask)
    try:
        if gid != -1:
            os.chown(path, -1, gid)
        os.chmod(path, mode)
        sock.listen(backlog)
    except OSError:
        sock.close()
        with contextlib.suppress(OSError):
            path.unlink()
        raise
    sock.setblocking(False)
    return sock


def remove_socket(path: Path, inode: int) -> None:
    """Remove the socket file, unless it is no longer ours (another daemon replaced it)."""
    with contextlib.suppress(FileNotFoundError):
        if path.lstat().st_ino == inode:
            path.unlink()
