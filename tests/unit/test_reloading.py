"""reloading: the sources a reload builds and closes, and a reload that the stop overtakes."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from sidkeyd import reloading
from sidkeyd.app import Application
from sidkeyd.config import FileSourceConfig, SourceConfig
from sidkeyd.config_loader import load_config
from sidkeyd.connections import ConnectionTracker
from sidkeyd.metrics import NO_METRICS
from sidkeyd.notify import Notifier
from sidkeyd.sources import Source, build_source
from sidkeyd.tokens import TokenBroker
from support.engine import make_manager
from support.fakes import FakeSource


class CountingSource(FakeSource):
    """A FakeSource that counts its close() calls."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.closes = 0

    def close(self) -> None:
        self.closes += 1


def file_source(name: str) -> FileSourceConfig:
    return FileSourceConfig(name=name, path=Path(f"/nonexistent/{name}.toml"))


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> list[CountingSource]:
    """Every source ``build_source`` made; building one named ``broken`` raises."""
    made: list[CountingSource] = []

    def build(config: SourceConfig) -> Source:
        if config.name == "broken":
            raise ValueError("cannot reach the backend")
        made.append(CountingSource(config.name))
        return made[-1]

    monkeypatch.setattr(reloading, "build_source", build)
    return made


def test_a_source_that_fails_to_build_closes_those_built_before_it(
    built: list[CountingSource],
) -> None:
    """Two fresh sources built, the third raises: both are closed once, the error goes on."""
    configs = {name: file_source(name) for name in ("aws", "vault", "broken")}
    with pytest.raises(ValueError, match="cannot reach the backend"):
        reloading.sources_for(configs, set(configs), {})
    assert [("aws", 1), ("vault", 1)] == [(s.name, s.closes) for s in built]


def test_a_failed_attempt_leaves_the_running_sources_open(built: list[CountingSource]) -> None:
    """A source kept from the running config is not the attempt's to close."""
    kept = CountingSource("kept")
    configs = {
        "kept": file_source("kept"),
        "new": file_source("new"),
        "broken": file_source("broken"),
    }
    with pytest.raises(ValueError, match="cannot reach"):
        reloading.sources_for(configs, {"new", "broken"}, {"kept": kept})
    assert (0, [1]) == (kept.closes, [s.closes for s in built])


def test_a_successful_attempt_builds_the_fresh_and_keeps_the_others(
    built: list[CountingSource],
) -> None:
    """No failure: the fresh source is new and open, the kept one is the running one."""
    kept = CountingSource("kept")
    configs = {"kept": file_source("kept"), "new": file_source("new")}
    sources = reloading.sources_for(configs, {"new"}, {"kept": kept})
    assert (kept, built[0], 0) == (sources["kept"], sources["new"], built[0].closes)


KEYS = '[sandbox]\napi_key = "reloading-unit-key-9f3e-not-real"\n'
CONFIG = """
[server]
socket = "{folder}/sidkeyd.sock"

[sources.local]
type = "file"
path = "keys.toml"

[environments.sandbox]
source = "local"
secret = "sandbox"
partner_id = "085"
"""
ADDED = """
[sources.more]
type = "file"
path = "keys.toml"

[environments.staging]
source = "more"
secret = "sandbox"
partner_id = "085"
"""


class RecordingNotifier(Notifier):
    """A Notifier with no systemd behind it that keeps what it was asked to send."""

    def __init__(self) -> None:
        super().__init__({})
        self.sent: list[str] = []

    def send(self, *assignments: str) -> bool:
        self.sent += assignments
        return False


def running_daemon(folder: Path) -> tuple[reloading.Reloader, reloading.Running, RecordingNotifier]:
    """A Reloader over a real engine and app for CONFIG in ``folder``, started."""
    (folder / "keys.toml").write_text(KEYS)
    path = folder / "sidkeyd.toml"
    path.write_text(CONFIG.format(folder=folder))
    config = load_config(path)
    sources = {name: build_source(source) for name, source in config.sources.items()}
    manager, store = make_manager(sources, *config.environments.values())
    running = reloading.Running(
        config,
        sources,
        manager,
        Application(config, manager),
        TokenBroker(config.environments, manager, store),
        NO_METRICS,
        ConnectionTracker(config.server.max_connections, config.server.max_connections_per_uid),
        reloading.limits_for(config.server),
        lambda _level: None,
    )
    notifier = RecordingNotifier()
    reloader = reloading.Reloader(running, notifier, lambda: "ok")
    reloader.started()
    return reloader, running, notifier


def test_a_stop_during_a_reload_applies_nothing_and_closes_what_it_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stop starts while the reload builds a new source: the outcome is reload_unavailable,
    the running config and sources stay, the new source is closed, no READY=1 after the stop."""
    building, release = threading.Event(), threading.Event()
    made: list[CountingSource] = []

    def slow_build(config: SourceConfig) -> Source:
        building.set()
        release.wait(10)
        made.append(CountingSource(config.name))
        return made[-1]

    monkeypatch.setattr(reloading, "build_source", slow_build)

    async def scenario() -> tuple[str, bool, int, list[str]]:
        reloader, running, notifier = running_daemon(tmp_path)
        before = running.config
        (tmp_path / "sidkeyd.toml").write_text(CONFIG.format(folder=tmp_path) + ADDED)
        reload = asyncio.ensure_future(reloader.reload(None))
        await asyncio.to_thread(building.wait, 10)
        reloader.stop()
        notifier.sent.clear()
        release.set()
        outcome = await reload
        return outcome.code, running.config is before, made[0].closes, notifier.sent

    assert ("reload_unavailable", True, 1, []) == asyncio.run(scenario())


def test_a_reload_after_the_stop_began_is_refused_without_reading_the_file(
    tmp_path: Path,
) -> None:
    """Once stopping, a reload (a late SIGHUP) is reload_unavailable, even for a file that
    would be invalid, and systemd hears no RELOADING=1."""

    async def scenario() -> tuple[str, list[str]]:
        reloader, _running, notifier = running_daemon(tmp_path)
        (tmp_path / "sidkeyd.toml").write_text("not toml [")
        reloader.stop()
        outcome = await reloader.reload(None)
        return outcome.code, notifier.sent

    assert ("reload_unavailable", []) == asyncio.run(scenario())
