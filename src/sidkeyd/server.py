"""The daemon's lifecycle: bind, load keys, serve, and shut down gracefully.

``Server.serve()`` is the async entry point; ``run()`` is the sync one. Signals are captured
here and only here: SIGTERM/SIGINT/SIGQUIT stop, SIGHUP forces a check of every environment,
and SIGUSR1/SIGUSR2/SIGALRM (whose default action would kill the daemon without a word and
leave its socket behind) are logged and ignored.

Shutdown has one budget, ``shutdown_timeout``, shared by draining connections and closing
sources; backend calls still running after it are abandoned with the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable, Mapping

from sidkeyd import __version__
from sidkeyd.app import Application
from sidkeyd.config import Config
from sidkeyd.connections import ConnectionTracker, Limits
from sidkeyd.freshness import Trigger
from sidkeyd.keystore import KeyStore
from sidkeyd.log import get_logger
from sidkeyd.metrics import NO_METRICS, Metrics
from sidkeyd.metrics_listener import serve_metrics
from sidkeyd.namespaces import namespace_warnings
from sidkeyd.notify import Notifier, Watchdog
from sidkeyd.process import harden_process
from sidkeyd.rejections import RejectionLog
from sidkeyd.rotation import KeyManager
from sidkeyd.socketfile import bind_unix_socket, inherited_socket, remove_socket
from sidkeyd.sources import Source, build_source
from sidkeyd.tokens import TokenBroker
from sidkeyd.transport import HttpProtocol

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
IGNORED_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM)


class Server:
    def __init__(
        self,
        config: Config,
        store: KeyStore,
        *,
        sources: Mapping[str, Source] | None = None,
    ) -> None:
        """``store`` is required: it is the one the log redactor reads (``cli`` passes both), and
        a fresh one here would leave log lines scrubbed by field name only."""
        self.config = config
        self.store = store
        self._sources = sources
        self._should_exit = asyncio.Event()
        self._log = get_logger()
        self.manager: KeyManager | None = None

    def run(self) -> None:
        """Run until SIGTERM/SIGINT, on uvloop when it is installed."""
        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
        with contextlib.suppress(ImportError):
            import uvloop

            loop_factory = uvloop.new_event_loop
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(self.serve())

    def request_exit(self) -> None:
        self._should_exit.set()

    async def serve(self) -> None:
        config = self.config
        hardening = harden_process(lock_memory=config.server.lock_memory)
        self._log.info(
            "daemon.hardened",
            core_dumps=not hardening.core_dumps_disabled,
            dumpable=hardening.dumpable,
            memory_locked=hardening.memory_locked,
        )
        for warning in [*config.warnings(), *namespace_warnings(config)]:
            self._log.warning("config.warning", message=warning)
        sock = inherited_socket()
        inode: int | None = None  # the socket file is ours to remove only if we made it
        if sock is not None:
            self._log.info("daemon.socket_inherited", socket=str(sock.getsockname()))
        else:
            sock = bind_unix_socket(
                config.server.socket,
                config.server.socket_mode,
                config.server.socket_group,
                backlog=config.server.backlog,
            )
            inode = os.lstat(config.server.socket).st_ino
        sources = self._sources or {
            name: build_source(source) for name, source in config.sources.items()
        }
        manager = self.manager = KeyManager(
            config.environments,
            sources,
            self.store,
            shutdown_timeout_s=config.server.shutdown_timeout.total_seconds(),
        )
        tracker = ConnectionTracker(
            config.server.max_connections, config.server.max_connections_per_uid
        )
        loop = asyncio.get_running_loop()
        metrics = Metrics(config.environments) if config.metrics.enabled else NO_METRICS
        metrics.watch(manager, lambda: len(tracker.connections))
        manager.observe_checks(metrics.checked)
        rejections = RejectionLog(self._log, schedule=loop.call_later, counted=metrics.rejected)
        tokens = TokenBroker(config.environments, manager, self.store)
        self._install_signal_handlers(manager)
        notifier = Notifier()
        notifier.send(f"STATUS=starting: checking {len(config.environments)} environment(s)")
        deadline: float | None = None  # set when the shutdown starts
        try:
            # Serving starts before the first loads: while they run, every request gets a
            # prompt 503 "starting" (health says so), never a connection left unanswered.
            app = Application(
                config, manager, rejections=rejections, tokens=tokens, metrics=metrics
            )
            limits = Limits(
                max_header_bytes=config.server.max_header_bytes,
                max_body_bytes=config.server.max_body_bytes,
                read_timeout_s=config.server.read_timeout.total_seconds(),
                idle_timeout_s=config.server.idle_timeout.total_seconds(),
                write_timeout_s=config.server.write_timeout.total_seconds(),
            )
            # create_unix_server listens again; without the backlog it would cut it to 100.
            server = await loop.create_unix_server(
                lambda: HttpProtocol(app.handle, limits, tracker, rejections),
                sock=sock,
                backlog=config.server.backlog,
            )
            self._log.info("daemon.listening", socket=str(config.server.socket), pid=os.getpid())
            scrapes = await self._metrics_listener(config, metrics)
            if await self._started(manager):
                self._log.info(
                    "daemon.started",
                    version=__version__,
                    pid=os.getpid(),
                    socket=str(config.server.socket),
                    environments=sorted(config.environments),
                )
                notifier.send("READY=1", f"STATUS={status_line(manager)}")
                watchdog = (
                    Watchdog(
                        loop,
                        notifier.watchdog_interval_s,
                        lambda: notifier.send("WATCHDOG=1", f"STATUS={status_line(manager)}"),
                    )
                    if notifier.watchdog_interval_s
                    else None
                )
                await self._should_exit.wait()
                if watchdog is not None:
                    watchdog.cancel()
            notifier.send("STOPPING=1", "STATUS=stopping")
            deadline = loop.time() + config.server.shutdown_timeout.total_seconds()
            self._log.info("daemon.stopping", open_connections=len(tracker.connections))
            server.close()
            if scrapes is not None:
                scrapes.close()
            tracker.shutdown()
            try:
                await asyncio.wait_for(tracker.drained.wait(), deadline - loop.time())
            except TimeoutError:
                self._log.warning("daemon.shutdown_timeout", aborted=len(tracker.connections))
                tracker.abort()
        finally:
            self._remove_signal_handlers()
            if inode is not None:
                remove_socket(config.server.socket, inode)
            sock.close()
            if deadline is None:  # start-up failed: the whole budget is left for the sources
                deadline = loop.time() + config.server.shutdown_timeout.total_seconds()
            tokens.stop()
            await manager.stop(max(0.0, deadline - loop.time()))
            rejections.flush(everything=True)
            notifier.close()
            self._log.info("daemon.stopped")

    async def _metrics_listener(self, config: Config, metrics: Metrics) -> asyncio.Server | None:
        if config.metrics.listen is None or not config.metrics.enabled:
            return None
        host, port = config.metrics.listen
        scrapes = await serve_metrics(host, port, metrics)
        self._log.info("metrics.listening", host=host, port=port)
        return scrapes

    async def _started(self, manager: KeyManager) -> bool:
        """The first load of every environment, unless a stop signal comes first (False).

        A backend that hangs at start-up must not hold a SIGTERM until its own timeouts pass.
        """
        start = asyncio.ensure_future(manager.start())
        stop = asyncio.ensure_future(self._should_exit.wait())
        await asyncio.wait({start, stop}, return_when=asyncio.FIRST_COMPLETED)
        if start.done():
            stop.cancel()
            start.result()
            return True
        start.cancel()
        await asyncio.gather(start, return_exceptions=True)
        return False

    def _install_signal_handlers(self, manager: KeyManager) -> None:
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, self._on_stop_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, lambda: manager.check_soon(Trigger.SIGNAL))
        for sig in IGNORED_SIGNALS:
            loop.add_signal_handler(sig, self._on_ignored_signal, sig)

    def _on_stop_signal(self, sig: signal.Signals) -> None:
        self._log.info("signal.received", signal=sig.name, action="stop")
        self.request_exit()

    def _on_ignored_signal(self, sig: signal.Signals) -> None:
        self._log.warning("signal.ignored", signal=sig.name)

    def _remove_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (*STOP_SIGNALS, signal.SIGHUP, *IGNORED_SIGNALS):
            loop.remove_signal_handler(sig)
        for sig in IGNORED_SIGNALS:  # still harmless while the sources close
            signal.signal(sig, signal.SIG_IGN)


def status_line(manager: KeyManager) -> str:
    """``sandbox: healthy; production: degraded (throttled)``, for ``systemctl status``."""
    parts = []
    for name in manager.environments:
        health, _reason = manager.health(name)
        code = manager.status(name).last_error
        parts.append(f"{name}: {health}" + (f" ({code.code})" if code else ""))
    return "; ".join(parts)
