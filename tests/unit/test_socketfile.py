"""Binding the socket: modes, stale files, live daemons, and paths that are unsafe."""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import socket
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sidkeyd import socketfile
from sidkeyd.errors import SocketInUseError, StartupError, UnsafeSocketPathError
from sidkeyd.socketfile import bind_unix_socket, inherited_socket, remove_socket
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


def test_numeric_group_that_has_no_name_is_given_to_the_socket(folder: Path) -> None:
    """A gid only a client container knows (no /etc/group entry here) is set as it is."""
    unnamed_gid = next(gid for gid in range(20010, 30000) if not _group_exists(gid))
    path = folder / "n.sock"
    with bind_unix_socket(path, 0o660, unnamed_gid):
        assert unnamed_gid == path.stat().st_gid


def _group_exists(gid: int) -> bool:
    try:
        grp.getgrgid(gid)
    except KeyError:
        return False
    return True


def test_remove_socket_leaves_a_replacement_alone(folder: Path) -> None:
    """Only our own inode is removed at shutdown."""
    path = folder / "r.sock"
    with bind_unix_socket(path, 0o600, None):
        remove_socket(path, inode=path.stat().st_ino + 1)
        assert path.exists()
        remove_socket(path, inode=path.stat().st_ino)
    assert not path.exists()


RACER = """
import contextlib, os, stat, sys
path, target = sys.argv[1], sys.argv[2]
link = path + ".racer"
os.symlink(target, link)
sys.stdout.write("ready\\n")
sys.stdout.flush()
while True:
    with contextlib.suppress(OSError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.rename(link, path)  # the symlink is made in advance: one call once seen
            os.symlink(target, link)
"""


@pytest.fixture
def racer(folder: Path) -> Iterator[tuple[Path, Path]]:
    """Another process swaps a symlink to a private file in whenever the socket appears."""
    path, target = folder / "raced.sock", folder / "secret"
    target.write_text("root only")
    os.chmod(target, 0o600)
    process = subprocess.Popen(
        [sys.executable, "-c", RACER, str(path), str(target)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    assert "ready\n" == process.stdout.readline()
    yield path, target
    process.kill()
    process.wait()


def test_a_symlink_swapped_in_during_bind_is_never_followed(racer: tuple[Path, Path]) -> None:
    """1000 binds against a racer: the file behind its symlink keeps its mode and group."""
    path, target = racer
    group = "nogroup" if os.geteuid() == 0 else None
    before = target.stat()
    for _ in range(1000):
        with contextlib.suppress(UnsafeSocketPathError, SocketInUseError, OSError):
            bind_unix_socket(path, 0o660, group).close()
        path.unlink(missing_ok=True)
    after = target.stat()
    assert (0o600, before.st_gid) == (stat.S_IMODE(after.st_mode), after.st_gid)
    assert [] == [name for name in os.listdir(path.parent) if name.startswith(".")]


@pytest.mark.skipif(os.geteuid() != 0, reason="giving the socket another group needs root")
def test_socket_gets_the_configured_group_and_no_private_folder_is_left(folder: Path) -> None:
    """The group is set before the socket is linked into place; the staging folder is gone."""
    path = folder / "g.sock"
    with bind_unix_socket(path, 0o660, "nogroup"):
        info = path.lstat()
        assert (grp.getgrnam("nogroup").gr_gid, 0o660) == (info.st_gid, stat.S_IMODE(info.st_mode))
        assert ["g.sock"] == os.listdir(folder)


def test_a_path_near_the_sun_path_limit_still_binds(folder: Path) -> None:
    """The staging path is longer than the socket path; binding goes through /proc/self/fd."""
    deep = folder / ("d" * (100 - len(str(folder)) - 2))
    deep.mkdir()
    path = deep / "s.sock"
    assert 107 >= len(str(path)) > 107 - 11
    with bind_unix_socket(path, 0o600, None) as sock:
        assert 0o600 == stat.S_IMODE(path.lstat().st_mode)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(path))
            sock.accept()[0].close()


def test_a_file_that_appears_during_bind_is_not_replaced(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Something put at the path after the stale check is refused, not replaced or followed."""
    path = folder / "late.sock"
    clear_stale = socketfile._clear_stale

    def then_a_symlink_appears(checked: Path) -> None:
        clear_stale(checked)
        checked.symlink_to(folder / "elsewhere")

    monkeypatch.setattr(socketfile, "_clear_stale", then_a_symlink_appears)
    with pytest.raises(UnsafeSocketPathError, match="appeared while binding"):
        bind_unix_socket(path, 0o600, None)
    assert (True, ["late.sock"]) == (path.is_symlink(), os.listdir(folder))


NOBODY = pwd.getpwnam("nobody")


def _error_as_nobody(call: Callable[[], object]) -> str:
    """Run ``call`` in a child process as nobody; its exception's type and message, or ''."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        os.close(read_end)
        result = ""
        try:
            os.setgroups([])
            os.setgid(NOBODY.pw_gid)
            os.setuid(NOBODY.pw_uid)
            call()
        except BaseException as exc:  # reported to the parent, whatever it is
            result = f"{type(exc).__name__}: {exc}"
        os.write(write_end, result.encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        message = pipe.read().decode()
    os.waitpid(pid, 0)
    return message


@pytest.fixture
def root_owned(folder: Path) -> Path:
    """A folder others can enter but not write to (root's, 0755), inside one they can enter."""
    os.chmod(folder, 0o755)
    locked = folder / "locked"
    locked.mkdir(mode=0o755)
    return locked


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become nobody")
def test_unwritable_socket_folder_is_named_with_the_ids_in_the_way(root_owned: Path) -> None:
    """A folder the daemon's uid cannot write: the error names it, its owner and the daemon's ids.

    Before, this was a bare PermissionError naming only a random private folder.
    """
    message = _error_as_nobody(lambda: bind_unix_socket(root_owned / "s.sock", 0o660, None))
    assert message.startswith(
        f"SocketFolderError: cannot write to the socket folder {root_owned}: Permission denied"
    )
    assert f"sidkeyd runs as uid {NOBODY.pw_uid}" in message
    assert f"{root_owned} has uid 0, gid 0, mode 0755" in message


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become nobody")
def test_socket_folder_that_cannot_be_created_is_named(root_owned: Path) -> None:
    """The missing folder and the existing parent that refuses it are both named."""
    missing = root_owned / "sidkeyd"
    message = _error_as_nobody(lambda: bind_unix_socket(missing / "s.sock", 0o660, None))
    assert message.startswith(
        f"SocketFolderError: cannot create the socket folder {missing}: Permission denied"
    )
    assert f"{root_owned} has uid 0" in message


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become nobody")
def test_socket_group_the_daemon_is_not_in_is_named(folder: Path) -> None:
    """chown to a group the daemon's uid is not in: the gid and what to do, not a bare EPERM."""
    os.chmod(folder, 0o755)
    writable = folder / "mine"
    writable.mkdir()
    os.chown(writable, NOBODY.pw_uid, NOBODY.pw_gid)
    message = _error_as_nobody(lambda: bind_unix_socket(writable / "s.sock", 0o660, 0))
    assert message.startswith(
        "SocketFolderError: cannot give socket_group 0 (sidkeyd must be in it) to the socket in "
        f"{writable}/."
    )
    assert "Operation not permitted" in message
    assert not (writable / "s.sock").exists()


@pytest.mark.parametrize("listen_fds", ["three", "1 ", "-1", "٢"])
def test_a_listen_fds_that_is_not_a_number_is_a_startup_error_naming_it(listen_fds: str) -> None:
    """As sd_listen_fds(3): an error naming the variable, never a ValueError nor a guess;
    the variables are still removed so that no child inherits them."""
    env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": listen_fds, "LISTEN_FDNAMES": "x"}
    with pytest.raises(StartupError) as refused:
        inherited_socket(env)
    assert "LISTEN_FDS is not a number" in str(refused.value)
    assert {} == env


def test_no_listen_fds_or_another_pid_is_no_inherited_socket() -> None:
    """Unset or empty LISTEN_FDS, or LISTEN_PID of another process: bind the path as usual."""
    mine = str(os.getpid())
    assert [None, None, None] == [
        inherited_socket({"LISTEN_PID": mine}),
        inherited_socket({"LISTEN_PID": mine, "LISTEN_FDS": ""}),
        inherited_socket({"LISTEN_PID": "1", "LISTEN_FDS": "three"}),
    ]


def test_listen_fds_naming_a_descriptor_that_is_not_a_socket_is_a_startup_error(
    tmp_path: Path,
) -> None:
    """LISTEN_FDS=1 with fd 3 a plain file (no socket passed, an audit file opened first): a
    start-up error naming the descriptor, not the socket module's 'Socket operation on
    non-socket'. In a child process, whose fd 3 can be made that file."""
    plain = tmp_path / "audit.jsonl"
    plain.write_text("")
    code = (
        "import os\n"
        "from sidkeyd.errors import StartupError\n"
        "from sidkeyd.socketfile import inherited_socket\n"
        "try:\n"
        "    inherited_socket({'LISTEN_PID': str(os.getpid()), 'LISTEN_FDS': '1'})\n"
        "except StartupError as exc:\n"
        "    print(exc)\n"
    )
    with plain.open() as file:
        fd = file.fileno()
        done = subprocess.run(
            [sys.executable, "-c", code],
            preexec_fn=lambda: os.dup2(fd, 3),  # the file as the child's fd 3
            close_fds=False,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert "LISTEN_FDS=1 but fd 3 is not a socket: the service manager passed none" == (
        done.stdout.strip() or done.stderr.strip()
    )
