"""Config reload (SIGHUP, ``POST /v1/reload``): re-read the file, validate, plan, swap, re-check.

One reload at a time: a second waits for the first, and SIGHUPs that arrive while one is
waiting fold into it. The file is read and new sources are built off the event loop; the swap
(``apply``) is one synchronous step on it, so no request sees half of two configs. An invalid
file or a change that needs a restart changes nothing. Every environment is then checked:
those kept keep their key and get a version check (no read of the secret unless it moved),
the added and changed ones are read as at start-up.

systemd hears ``RELOADING=1`` (with ``MONOTONIC_USEC``) when a reload starts and ``READY=1``
when it ends, whatever the outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sidkeyd.app import Application
from sidkeyd.audit import AuditTrail
from sidkeyd.config import Config, ServerConfig, SourceConfig
from sidkeyd.config_loader import load_config
from sidkeyd.connections import ConnectionTracker, Limits
from sidkeyd.errors import ConfigError, ConfigProblem
from sidkeyd.freshness import Trigger
from sidkeyd.log import get_logger
from sidkeyd.metrics import Metrics
from sidkeyd.notify import Notifier
from sidkeyd.peer import Peer
from sidkeyd.redaction import truncate
from sidkeyd.reload_plan import ReloadOutcome, ReloadPlan, plan_reload
from sidkeyd.rotation import KeyManager
from sidkeyd.sources import Source, build_source
from sidkeyd.tokens import TokenBroker


def limits_for(server: ServerConfig) -> Limits:
    return Limits(
        max_header_bytes=server.max_header_bytes,
        max_body_bytes=server.max_body_bytes,
        read_timeout_s=server.read_timeout.total_seconds(),
        idle_timeout_s=server.idle_timeout.total_seconds(),
        write_timeout_s=server.write_timeout.total_seconds(),
    )


@dataclass
class Running:
    """What holds the config in a running daemon: the one object a reload swaps into."""

    config: Config
    sources: Mapping[str, Source]
    manager: KeyManager
    app: Application
    tokens: TokenBroker
    metrics: Metrics
    tracker: ConnectionTracker
    limits: Limits  # for connections accepted from now on
    set_log_level: Callable[[str], None]


def apply(running: Running, new: Config, plan: ReloadPlan, sources: Mapping[str, Source]) -> None:
    """Swap ``new`` in. Synchronous: nothing runs on the loop between two of these lines."""
    running.manager.reconfigure(new.environments, sources, list(plan.changed))
    running.tokens.reconfigure(new.environments)
    running.metrics.track(new.environments)
    running.app.reconfigure(new)
    running.tracker.max_connections = new.server.max_connections
    running.tracker.max_connections_per_uid = new.server.max_connections_per_uid
    running.limits = limits_for(new.server)
    if plan.log_level is not None:
        running.set_log_level(new.log.level)
    running.config, running.sources = new, sources


class Reloader:
    def __init__(
        self,
        running: Running,
        notifier: Notifier,
        status: Callable[[], str],
        audit: AuditTrail | None = None,
    ) -> None:
        self._running = running
        self._audit = audit
        self._path = running.config.path
        self._notifier = notifier
        self._status = status
        self._lock = asyncio.Lock()
        self._started = asyncio.Event()  # no reload while the first loads run
        self._queued = False  # a SIGHUP's reload waits for the lock
        self._stopping = False
        self._background: set[asyncio.Future[ReloadOutcome]] = set()
        self._log = get_logger()

    @property
    def available(self) -> bool:
        return self._path is not None

    def started(self) -> None:
        self._started.set()

    def stop(self) -> None:
        """The daemon is stopping: no reload applies from now on (the engine it would
        reconfigure is being stopped); one in progress changes nothing and closes what it built.
        """
        self._stopping = True
        self._started.set()  # a reload still waiting for the start is refused, not left waiting

    def reload_soon(self) -> None:
        """SIGHUP: reload in the background; one already waiting to start covers this one."""
        if self._queued:
            return
        self._queued = True
        task = asyncio.ensure_future(self.reload(None, trigger=Trigger.SIGNAL, queued=True))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def reload(
        self, peer: Peer | None, *, trigger: Trigger = Trigger.RELOAD, queued: bool = False
    ) -> ReloadOutcome:
        """Re-read the file and apply it, or change nothing and say why; ``peer`` asked for it
        (``None``: a signal)."""
        await self._started.wait()
        async with self._lock:
            if queued:
                self._queued = False  # a SIGHUP from now on needs a reload of its own
            fields = dict(peer.log_fields()) if peer else {}
            if self._stopping:
                outcome = self._failed(trigger, fields, "reload_unavailable", [_STOPPING])
            else:
                outcome = await self._notified_reload(trigger, fields)
            if self._audit is not None:
                self._audit.reloaded(outcome, peer)
        return outcome

    async def _notified_reload(self, trigger: Trigger, peer: dict[str, Any]) -> ReloadOutcome:
        monotonic_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._notifier.send(
            "RELOADING=1", f"MONOTONIC_USEC={monotonic_usec}", "STATUS=reloading the config"
        )
        try:
            return await self._reload(trigger, peer)
        finally:
            if not self._stopping:  # systemd heard STOPPING=1: no READY=1 after it
                self._notifier.send("READY=1", f"STATUS={self._status()}")

    async def _reload(self, trigger: Trigger, peer: dict[str, Any]) -> ReloadOutcome:
        running = self._running
        if self._path is None:
            return self._failed(trigger, peer, "config_invalid", [_NO_FILE])
        self._log.info("config.reload_started", trigger=trigger, path=str(self._path), **peer)
        try:
            new = await asyncio.to_thread(load_config, self._path)
        except ConfigError as exc:
            return self._failed(trigger, peer, "config_invalid", exc.problems)
        if self._stopping:  # the stop began while the file was read
            return self._failed(trigger, peer, "reload_unavailable", [_STOPPING])
        plan = plan_reload(running.config, new)
        if plan.refused:
            return self._failed(trigger, peer, "restart_required", plan.restart_required)
        try:
            fresh = set(plan.sources_added) | set(plan.sources_changed)
            sources = await asyncio.to_thread(sources_for, new.sources, fresh, running.sources)
        except Exception as exc:  # a source that cannot be built is a bad config
            problem = ConfigProblem("sources", f"cannot set up a source: {type(exc).__name__}")
            return self._failed(trigger, peer, "config_invalid", [problem])
        if self._stopping:  # the stop began while the sources were built: close them unused
            await asyncio.to_thread(close_quietly, [sources[name] for name in fresh])
            return self._failed(trigger, peer, "reload_unavailable", [_STOPPING])
        apply(running, new, plan, sources)
        self._log.info("config.reloaded", trigger=trigger, **plan.summary(), **peer)
        for warning in new.warnings():
            self._log.warning("config.warning", message=warning)
        running.manager.check_soon(trigger, force=False)
        return ReloadOutcome("reloaded", plan)

    def _failed(
        self, trigger: Trigger, peer: dict[str, Any], code: str, problems: Any
    ) -> ReloadOutcome:
        outcome = ReloadOutcome(code, problems=_bounded(list(problems)))
        self._log.error(
            "config.reload_failed",
            trigger=trigger,
            path=str(self._path),
            code=code,
            problems=[str(p) for p in outcome.problems],
            **peer,
        )
        return outcome


# A refusal names at most this many problems, each reason at most this long: its answer must
# fit what `sidkeyd reload` reads (1 MiB), and its log line and audit record stay small.
MAX_PROBLEMS_SHOWN = 100
MAX_REASON_CHARS = 512


def _bounded(problems: list[ConfigProblem]) -> tuple[ConfigProblem, ...]:
    shown = [ConfigProblem(p.key, truncate(p.reason, MAX_REASON_CHARS)) for p in problems]
    if len(shown) > MAX_PROBLEMS_SHOWN:
        more = len(shown) - MAX_PROBLEMS_SHOWN
        shown = shown[:MAX_PROBLEMS_SHOWN]
        shown.append(ConfigProblem("(file)", f"{more} more problem(s): check-config names all"))
    return tuple(shown)


def sources_for(
    configs: Mapping[str, SourceConfig], fresh: set[str], current: Mapping[str, Source]
) -> dict[str, Source]:
    """The sources of a new config: the ``fresh`` ones built anew, the others as they are.

    Blocking (run off the loop). If one cannot be built, those built before it are closed
    before the error goes on: nothing else would ever close their clients and sockets.
    """
    sources: dict[str, Source] = {}
    built: list[Source] = []
    try:
        for name, config in configs.items():
            if name in fresh:
                sources[name] = build_source(config)
                built.append(sources[name])
            else:
                sources[name] = current[name]
    except BaseException:
        close_quietly(built)
        raise
    return sources


def close_quietly(sources: Iterable[Source]) -> None:
    """Close sources no one will use; a close that fails must not hide why they are closed."""
    for source in sources:
        with contextlib.suppress(Exception):
            source.close()


_NO_FILE = ConfigProblem("(file)", "the daemon was not started with a config file")
_STOPPING = ConfigProblem("(daemon)", "the daemon is stopping; nothing was applied")
