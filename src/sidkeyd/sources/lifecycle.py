"""Starting and closing a set of sources: the watchers' bridge to the loop, a bounded close."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Mapping
from typing import Any

from sidkeyd.sources import Source, WatchingSource


def start_watchers(sources: Mapping[str, Source], on_change: Callable[[str, str], None]) -> None:
    """Start every watching source; ``on_change(source_name, secret)`` runs on the loop.

    Watchers call back from their own threads, so each call is handed to the running loop.
    """
    loop = asyncio.get_running_loop()
    for name, source in sources.items():
        if not isinstance(source, WatchingSource):
            continue

        def changed(secret: str, source_name: str = name) -> None:
            loop.call_soon_threadsafe(on_change, source_name, secret)

        source.watch(changed)


async def close_sources(sources: Mapping[str, Source], timeout_s: float, log: Any) -> None:
    """Close every source in its own daemon thread, waiting at most ``timeout_s``.

    A backend stuck in a call (a hung credential helper, a black-holed Vault) must not hold
    the shutdown past its budget; a source still closing then is named in ``source.close_timeout``.
    """
    loop = asyncio.get_running_loop()
    waiting: dict[asyncio.Future[None], str] = {}
    for name, source in sources.items():
        done: asyncio.Future[None] = loop.create_future()

        def close(source: Source = source, done: asyncio.Future[None] = done) -> None:
            try:
                source.close()
            finally:
                with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
                    loop.call_soon_threadsafe(_resolve, done)

        threading.Thread(target=close, name=f"sidkeyd-close-{name}", daemon=True).start()
        waiting[done] = name
    if not waiting:
        return
    _, pending = await asyncio.wait(waiting, timeout=timeout_s)
    if pending:
        log.warning("source.close_timeout", sources=sorted(waiting[f] for f in pending))


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
