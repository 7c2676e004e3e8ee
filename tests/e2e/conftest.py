"""End-to-end fixtures: each test gets a factory for daemons that are stopped afterwards."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from support.daemon import Daemon

DaemonFactory = Callable[..., Daemon]


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[DaemonFactory]:
    """Start daemons with a config text; all are stopped (SIGTERM) when the test ends."""
    started: list[Daemon] = []

    def start(
        config: str, *, files: dict[str, str] | None = None, env: dict[str, str] | None = None
    ) -> Daemon:
        folder = tmp_path / f"daemon{len(started)}"
        folder.mkdir()
        for name, text in (files or {}).items():
            (folder / name).write_text(text)
        daemon = Daemon.start(folder, config, env=env)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.stop()
