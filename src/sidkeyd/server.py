"""The daemon's lifecycle: bind, load keys, serve, and shut down gracefully.

``Server.serve()`` is the async entry point; ``run()`` is the sync one. Signals are captured
here and only here: SIGTERM/SIGINT/SIGQUIT stop, SIGHUP reopens the audit file, reloads the
config file (``reloading``) and checks every environment, and SIGUSR1/SIGUSR2/SIGALRM (whose
default action would kill the daemon without a word and leave its socket behind) are logged
and ignored.

Shutdown has one budget, ``shutdown_timeout``, shared by draining connections and closing
sources; backend calls still running after it are abandoned with the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Awaitable, Callable, Mapping

from sidkeyd import __version__
from sidkeyd.app import Application
from sidkeyd.audit import AuditedRejections, AuditTrail
from sidkeyd.config import Config
from sidkeyd.connections import ConnectionTracker
from sidkeyd.keystore import KeyStore
from sidkeyd.log import get_logger, stdout_outlet
from sidkeyd.metrics import NO_METRICS, Metrics
from sidkeyd.metrics_listener import serve_metrics
from sidkeyd.namespaces import namespace_warnings
from sidkeyd.notify import Notifier, Watchdog
from sidkeyd.peer import Peer
from sidkeyd.process import harden_process
from sidkeyd.rejections import RejectionLog
from sidkeyd.reload_plan import ReloadOutcome
from sidkeyd.reloading import Reloader, Running, limits_for
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
        set_log_level: Callable[[str], None] = lambda _level: None,
    ) -> None:
        """``store`` is required: it is the one the log redactor reads (``cli`` passes both), and
        a fresh one here would leave log lines scrubbed by field name only. ``set_log_level``
        is how a reload changes the level (``cli`` configures logging)."""
        self.config = config
        self._set_log_level = set_log_level
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
        audit = self._audit_trail(config)  # before the socket: one that cannot open stops here
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
        if audit is not None:
            audit.counted = metrics.audit_failed
            audit.start()
        rejections = RejectionLog(
            self._log if audit is None else AuditedRejections(self._log, audit),
            schedule=loop.call_later,
            counted=metrics.rejected,
        )
        tokens = TokenBroker(config.environments, manager, self.store)
        notifier = Notifier()
        notifier.send(f"STATUS=starting: checking {len(config.environments)} environment(s)")
        deadline: float | None = None  # set when the shutdown starts
        try:
            # Serving starts before the first loads: while they run, every request gets a
            # prompt 503 "starting" (health says so), never a connection left unanswered.
            def reload(peer: Peer) -> Awaitable[ReloadOutcome]:
                return reloader.reload(peer)

            app = Application(
                config,
                manager,
                rejections=rejections,
                tokens=tokens,
                metrics=metrics,
                reload=reload if config.path is not None else None,
                audit=audit,
            )
            running = Running(
                config,
                sources,
                manager,
                app,
                tokens,
                metrics,
                tracker,
                limits_for(config.server),
                self._set_log_level,
            )
            reloader = Reloader(running, notifier, lambda: status_line(manager), audit)
            self._install_signal_handlers(reloader, audit)
            # create_unix_server listens again; without the backlog it would cut it to 100.
            server = await loop.create_unix_server(
                lambda: HttpProtocol(app.handle, running.limits, tracker, rejections),
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
                reloader.started()
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
            reloader.stop()
            notifier.send("STOPPING=1", "STATUS=stopping")
            deadline = loop.time() + running.config.server.shutdown_timeout.total_seconds()
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
            if audit is not None:
                audit.close()
            notifier.close()
            self._log.info("daemon.stopped")

    def _audit_trail(self, config: Config) -> AuditTrail | None:
        if not config.audit.enabled:
            return None
        return AuditTrail(
            config.audit,
            self.store.secrets,
            stdout=stdout_outlet() if config.audit.stdout else None,
            origin=f"unix:{config.server.socket}",
        )

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

    def _install_signal_handlers(self, reloader: Reloader, audit: AuditTrail | None) -> None:
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, self._on_stop_signal, sig)

        def on_sighup() -> None:
            if audit is not None:
                audit.reopen()  # logrotate moved the file
            reloader.reload_soon()

        loop.add_signal_handler(signal.SIGHUP, on_sighup)
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
        # Still harmless while the sources close; SIGHUP too (logrotate, `systemctl reload`
        # during a stop), whose default action would kill the daemon before its trail closes.
        for sig in (signal.SIGHUP, *IGNORED_SIGNALS):
            signal.signal(sig, signal.SIG_IGN)


def status_line(manager: KeyManager) -> str:
    """``sandbox: healthy; production: degraded (throttled)``, for ``systemctl status``."""
    parts = []
    for name in manager.environments:
        health, _reason = manager.health(name)
        code = manager.status(name).last_error
        parts.append(f"{name}: {health}" + (f" ({code.code})" if code else ""))
    return "; ".join(parts)
