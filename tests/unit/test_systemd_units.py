"""The shipped systemd units, checked with systemd's own tools (no systemd as PID 1 here)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[2] / "systemd"
ANALYZE = shutil.which("systemd-analyze")


@pytest.fixture
def analyze() -> str:
    if ANALYZE is None:
        if os.environ.get("CI") == "true":
            pytest.fail("systemd-analyze is missing (Debian's systemd package)")
        pytest.skip("systemd-analyze is not installed here")
    return ANALYZE


def test_the_units_verify(analyze: str, tmp_path: Path) -> None:
    """systemd-analyze verify: no error in the service and socket units (binary of this install)."""
    sidkeyd = Path(sys.executable).with_name("sidkeyd")
    for name in ("sidkeyd.service", "sidkeyd.socket"):
        text = (UNITS / name).read_text().replace("/usr/local/bin/sidkeyd", str(sidkeyd))
        (tmp_path / name).write_text(text)
    result = subprocess.run(
        [analyze, "verify", "--man=no", "sidkeyd.service", "sidkeyd.socket"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (0, "") == (result.returncode, result.stderr.strip())


def test_the_service_exposure_is_at_most_2(analyze: str) -> None:
    """systemd-analyze security --offline: an exposure level of 2.0 or less."""
    result = subprocess.run(
        [analyze, "security", "--offline=true", str(UNITS / "sidkeyd.service")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    level = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert level is not None, result.stdout[-500:]
    assert float(level.group(1)) <= 2.0


def test_the_service_is_type_notify_with_a_watchdog() -> None:
    """READY=1 and WATCHDOG=1 are what systemd waits for (the daemon sends them)."""
    text = (UNITS / "sidkeyd.service").read_text()
    assert ["Type=notify", "NotifyAccess=main"] == [
        line for line in text.splitlines() if line.startswith(("Type=", "NotifyAccess="))
    ]
    assert re.search(r"^WatchdogSec=\d+s$", text, re.MULTILINE)


def test_reload_runs_sidkeyd_reload_on_the_service_socket() -> None:
    """ExecReload waits for the reload and fails when it is refused (not a bare kill -HUP)."""
    text = (UNITS / "sidkeyd.service").read_text()
    socket = re.search(r"^ListenStream=(.+)$", (UNITS / "sidkeyd.socket").read_text(), re.M)
    assert socket is not None
    assert [f"ExecReload=/usr/local/bin/sidkeyd reload --socket {socket.group(1)}"] == re.findall(
        r"^ExecReload=.*$", text, re.M
    )


def unit_setting(name: str, key: str) -> str:
    """The one value of ``key=`` in a shipped unit."""
    values = re.findall(rf"^{key}=(.*)$", (UNITS / name).read_text(), re.MULTILINE)
    assert 1 == len(values), f"{name}: {key}= {values}"
    return str(values[0])


def test_the_units_documentation_is_installed_beside_the_binary(tmp_path: Path) -> None:
    """Documentation= names a file that installing the package puts where the unit says.

    The unit runs /usr/local/bin/sidkeyd, i.e. an install with the prefix /usr/local. The files
    the Dockerfile copies are built and installed here into a scratch prefix (never touching
    this environment's own install: --ignore-installed), and the documentation path under
    /usr/local must exist under it, beside bin/sidkeyd.
    """
    prefix = Path("/usr/local")
    binary = Path(unit_setting("sidkeyd.service", "ExecStart").split()[0])
    assert prefix / "bin" / "sidkeyd" == binary
    project = tmp_path / "project"
    project.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(UNITS.parent / name, project / name)
    shutil.copytree(UNITS.parent / "src" / "sidkeyd", project / "src" / "sidkeyd")
    installed = tmp_path / "prefix"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-compile",
         "--ignore-installed", "--prefix", str(installed), str(project)],
        check=True, timeout=300, capture_output=True,
    )  # fmt: skip
    for name in ("sidkeyd.service", "sidkeyd.socket"):
        documentation = Path(unit_setting(name, "Documentation").removeprefix("file://"))
        assert documentation.is_relative_to(prefix), f"{name}: {documentation}"
        copy = installed / documentation.relative_to(prefix)
        assert (UNITS.parent / "README.md").read_text() == copy.read_text()
    assert (installed / "bin" / "sidkeyd").exists()


def systemd_tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is missing (Debian's systemd package)")
        pytest.skip(f"{name} is not installed here")
    return found


def test_sysusers_creates_the_user_and_groups(tmp_path: Path) -> None:
    """systemd-sysusers, on an empty root, accepts the shipped file and makes its user, groups."""
    (tmp_path / "etc").mkdir()
    result = subprocess.run(
        [systemd_tool("systemd-sysusers"), f"--root={tmp_path}",
         str(UNITS / "sidkeyd.sysusers.conf")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert 0 == result.returncode, result.stderr  # it reports what it creates on stderr
    users = [line.split(":")[0] for line in (tmp_path / "etc/passwd").read_text().splitlines()]
    groups = [line.split(":")[0] for line in (tmp_path / "etc/group").read_text().splitlines()]
    assert (["sidkeyd"], ["sidkeyd", "sidkeyd-clients"]) == (users, sorted(groups))


def ids_in(table: Path) -> dict[str, int]:
    """Name to id in an /etc/passwd or /etc/group file."""
    return {line.split(":")[0]: int(line.split(":")[2]) for line in table.read_text().splitlines()}


def test_tmpfiles_makes_the_config_and_socket_folders(tmp_path: Path) -> None:
    """systemd-tmpfiles, after sysusers, makes /etc/sidkeyd (root, the daemon's group, 0750) and
    /run/sidkeyd (the daemon's, 0755: its clients traverse it to reach the socket)."""
    (tmp_path / "etc").mkdir()
    sysusers = UNITS / "sidkeyd.sysusers.conf"
    subprocess.run(
        [systemd_tool("systemd-sysusers"), f"--root={tmp_path}", str(sysusers)],
        capture_output=True, timeout=60, check=True,
    )  # fmt: skip
    result = subprocess.run(
        [systemd_tool("systemd-tmpfiles"), f"--root={tmp_path}", "--create",
         str(UNITS / "sidkeyd.tmpfiles.conf")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert (0, "") == (result.returncode, result.stderr.strip())
    uid, gid = (ids_in(tmp_path / "etc" / name)["sidkeyd"] for name in ("passwd", "group"))
    folders = [(tmp_path / name).stat() for name in ("etc/sidkeyd", "run/sidkeyd")]
    assert [(0o750, 0, gid), (0o755, uid, gid)] == [
        (folder.st_mode & 0o7777, folder.st_uid, folder.st_gid) for folder in folders
    ]
