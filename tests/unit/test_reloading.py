"""reloading: the sources a reload builds, and what happens to them when the attempt fails."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidkeyd import reloading
from sidkeyd.config import FileSourceConfig, SourceConfig
from sidkeyd.sources import Source
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
