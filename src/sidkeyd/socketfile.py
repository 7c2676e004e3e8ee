"""Binding the Unix socket safely: no stale-file guesswork, no window where it is too open."""

from __future__ import annotations

import contextlib
import errno
import grp
import os
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from sidkeyd.errors import (
    SocketFolderError,
    SocketInUseError,
    StartupError,
    UnsafeSocketPathError,
)


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
    with _naming("read the socket folder", folder):
        info = folder.stat()
    if info.st_mode & stat.S_IWOTH and not info.st_mode & stat.S_ISVTX:
        raise UnsafeSocketPathError(
            f"{folder} is writable by every user and not sticky: another user could replace "
            "the socket; use a folder such as /run/sidkeyd"
        )


def _clear_stale(path: Path) -> None:
    try:
        with _naming("look at the socket path", path):
            info = path.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode):
        raise UnsafeSocketPathError(f"{path} is a symbolic link; refusing to bind through it")
    if not stat.S_ISSOCK(info.st_mode):
        raise UnsafeSocketPathError(f"{path} exists and is not a socket; refusing to replace it")
    with _naming("probe the socket left at", path):
        live = probe(path)
    if live:
        raise SocketInUseError(f"another process is serving on {path}")
    with _naming("remove the stale socket", path):
        path.unlink()


def bind_unix_socket(
    path: Path, mode: int, group: str | int | None, backlog: int = 1024
) -> socket.socket:
    """Bind and listen at ``path`` with ``mode`` and ``group``.

    The socket is made with its final mode (by the umask) and group inside a fresh folder
    that only this process can reach, then hard-linked into place. link(2) neither follows nor
    replaces what is at ``path``: a file or symlink swapped in meanwhile is refused, and no
    chmod or chown ever goes through the shared folder, where someone else could point it at
    another file. The socket is never reachable by more users than configured.
    """
    gid = _group_id(group)
    with _naming("create the socket folder", path.parent):
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    _check_folder(path.parent)
    _clear_stale(path)
    with _private_folder(path.parent) as (private_fd, private_path):
        sock = _bind_privately(private_fd, private_path, mode, gid)
        try:
            with _naming("listen on the socket in", private_path):
                sock.listen(backlog)  # before it is reachable: a probe must never find it refusing
            _link_into_place(private_fd, path)
        except (OSError, StartupError):
            sock.close()
            raise
    sock.setblocking(False)
    return sock


_NODE = "s"  # the socket's name inside the private folder


def _group_id(group: str | int | None) -> int:
    if group is None:
        return -1
    if isinstance(group, int):
        return group  # a gid need not be named here (a client container's group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise UnsafeSocketPathError(f"socket group {group!r} does not exist") from None


@contextlib.contextmanager
def _private_folder(folder: Path) -> Iterator[tuple[int, Path]]:
    """A new 0700 folder beside the socket (same filesystem, for link), held open by fd."""
    with _naming("write to the socket folder", folder):
        private = Path(tempfile.mkdtemp(prefix=".", dir=folder))
    try:
        with _naming("open the private folder", private):
            fd = os.open(private, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except (OSError, StartupError):
        with contextlib.suppress(OSError):
            os.rmdir(private)
        raise
    try:
        info = os.fstat(fd)
        if info.st_uid != os.geteuid() or stat.S_IMODE(info.st_mode) != 0o700:
            raise UnsafeSocketPathError(f"{private} was replaced while binding the socket")
        yield fd, private
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(_NODE, dir_fd=fd)  # the private name; the one at the socket path stays
        os.close(fd)
        with contextlib.suppress(OSError):
            os.rmdir(private)


def _bind_privately(private_fd: int, private_path: Path, mode: int, gid: int) -> socket.socket:
    """Bind in the private folder; every later step goes through its fd, never a path."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old_umask = os.umask(0o777 & ~mode)
        try:
            with _naming("bind the socket in", private_path):
                sock.bind(_bind_address(private_fd, private_path))
        finally:
            os.umask(old_umask)
        try:
            node = os.stat(_NODE, dir_fd=private_fd, follow_symlinks=False)
        except FileNotFoundError:
            raise UnsafeSocketPathError(
                f"{private_path} was replaced while binding the socket"
            ) from None
        if stat.S_IMODE(node.st_mode) != mode:  # a default ACL on the folder overrides the umask
            with _naming("set the socket's mode in", private_path):
                os.chmod(_NODE, mode, dir_fd=private_fd)  # only we can add entries there
        if gid != -1:
            doing = f"give socket_group {gid} (sidkeyd must be in it) to the socket in"
            with _naming(doing, private_path):
                os.chown(_NODE, -1, gid, dir_fd=private_fd, follow_symlinks=False)
    except (OSError, StartupError):
        sock.close()
        raise
    return sock


def _bind_address(private_fd: int, private_path: Path) -> str:
    """The private path, or through /proc when that is too long for sun_path (107 bytes)."""
    address = str(private_path / _NODE)
    if len(os.fsencode(address)) <= _SUN_PATH_MAX:
        return address
    return f"/proc/self/fd/{private_fd}/{_NODE}"


_SUN_PATH_MAX = 107


def _link_into_place(private_fd: int, path: Path) -> None:
    try:
        with _naming("link the socket to", path):
            os.link(_NODE, path, src_dir_fd=private_fd, follow_symlinks=False)
    except FileExistsError:
        raise UnsafeSocketPathError(
            f"{path} appeared while binding: another daemon, or someone else who can write to "
            f"{path.parent}"
        ) from None


@contextlib.contextmanager
def _naming(doing: str, path: Path) -> Iterator[None]:
    """An OSError of this step, as a SocketFolderError that names the path (and who we are).

    FileNotFoundError and FileExistsError pass: the callers decide what those mean.
    """
    try:
        yield
    except (FileNotFoundError, FileExistsError):
        raise
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise SocketFolderError(f"cannot {doing} {path}: {reason}{_why(exc, path)}") from exc


def _why(exc: OSError, path: Path) -> str:
    """For a refusal: the daemon's ids beside the owner and mode of the folder in the way."""
    if exc.errno == errno.EROFS:
        return " (a read-only filesystem: mount a writable volume at the socket's folder)"
    if exc.errno not in (errno.EACCES, errno.EPERM):
        return ""
    groups = ",".join(str(g) for g in sorted({os.getegid(), *os.getgroups()}))
    who = f"sidkeyd runs as uid {os.geteuid()}, groups {groups}"
    with contextlib.suppress(OSError, StopIteration):
        folder = next(p for p in (path, *path.parents) if os.path.lexists(p))
        info = folder.stat()
        owner = f"uid {info.st_uid}, gid {info.st_gid}, mode {stat.S_IMODE(info.st_mode):04o}"
        return f" ({who}; {folder} has {owner})"
    return f" ({who})"


def remove_socket(path: Path, inode: int) -> None:
    """Remove the socket file, unless it is no longer ours (another daemon replaced it)."""
    with contextlib.suppress(FileNotFoundError):
        if path.lstat().st_ino == inode:
            path.unlink()


SD_LISTEN_FDS_START = 3  # sd_listen_fds(3): the first socket passed by the service manager


def inherited_socket(environ: dict[str, str] | None = None) -> socket.socket | None:
    """The listening socket systemd passed (socket activation), or None.

    ``LISTEN_PID`` must be this process and ``LISTEN_FDS`` at least 1 (not a decimal number: a
    ``StartupError``, as sd_listen_fds(3) fails); with several, the one
    ``LISTEN_FDNAMES`` names ``sidkeyd`` (else the first). The variables are removed so that no
    child inherits them. The socket is used as it is: its mode and group are the socket unit's,
    and it is never unlinked (systemd owns the path).
    """
    env = os.environ if environ is None else environ
    if env.get("LISTEN_PID") != str(os.getpid()):
        return None
    listen_fds = env.get("LISTEN_FDS", "0") or "0"
    names = (env.get("LISTEN_FDNAMES") or "").split(":")
    for variable in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        env.pop(variable, None)
    if not (listen_fds.isascii() and listen_fds.isdigit()):
        # sd_listen_fds(3) fails on it too: guessing could serve on the wrong descriptor.
        raise StartupError(
            f"LISTEN_FDS is not a number ({listen_fds[:32]!r}): the service manager's "
            "socket-activation variables are malformed"
        )
    count = int(listen_fds)
    if count < 1:
        return None
    index = names.index("sidkeyd") if "sidkeyd" in names[:count] else 0
    fd = SD_LISTEN_FDS_START + index
    try:
        passed = stat.S_ISSOCK(os.fstat(fd).st_mode)
    except OSError:
        passed = False
    if not passed:
        raise StartupError(
            f"LISTEN_FDS={count} but fd {fd} is not a socket: the service manager passed none"
        )
    sock = socket.socket(fileno=fd)
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        raise UnsafeSocketPathError(
            f"the socket passed by the service manager (fd {sock.fileno()}) is not a Unix "
            "stream socket: ListenStream= must name a path"
        )
    sock.setblocking(False)
    return sock
