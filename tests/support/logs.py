"""One way to capture structlog events in-process, from any thread, with bounded waits.

with captured() as logs:
    ...  # code that logs, on the loop or in a watcher/renewer thread
    logs.wait_for("vault.token_renewed")
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import structlog

WAIT = 20.0


class LogCapture:
    """Every structlog event, from any thread, with a bounded wait for one to appear."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._cond = threading.Condition()

    def processor(self, _logger: Any, _method: str, event_dict: Any) -> Any:
        with self._cond:
            self.events.append(dict(event_dict))
            self._cond.notify_all()
        raise structlog.DropEvent

    def matching(self, name: str, **fields: Any) -> list[dict[str, Any]]:
        with self._cond:
            return [
                e
                for e in self.events
                if e.get("event") == name and all(e.get(k) == v for k, v in fields.items())
            ]

    def wait_until(
        self, name: str, predicate: Callable[[dict[str, Any]], bool], *, timeout: float = WAIT
    ) -> dict[str, Any]:
        """The first ``name`` event for which ``predicate`` holds, waiting for it (bounded)."""
        with self._cond:
            found = self._cond.wait_for(
                lambda: [e for e in self.matching(name) if predicate(e)], timeout
            )
        assert found, f"no matching {name} within {timeout}s; saw {self.events}"
        return found[0]

    def wait_for(self, name: str, *, timeout: float = WAIT, **fields: Any) -> dict[str, Any]:
        with self._cond:
            found = self._cond.wait_for(lambda: self.matching(name, **fields), timeout)
        assert found, (
            f"no {name} {fields} within {timeout}s; saw {[e['event'] for e in self.events]}"
        )
        return found[0]


@contextmanager
def captured() -> Iterator[LogCapture]:
    """Capture every event until the block ends; structlog's defaults are restored after."""
    capture = LogCapture()
    structlog.configure(processors=[capture.processor], cache_logger_on_first_use=False)
    try:
        yield capture
    finally:
        structlog.reset_defaults()


@contextmanager
def captured_events() -> Iterator[list[dict[str, Any]]]:
    """The same capture, as the plain list of events (for helpers that poll a list)."""
    with captured() as capture:
        yield capture.events
