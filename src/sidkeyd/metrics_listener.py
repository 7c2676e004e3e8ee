"""The optional TCP listener for Prometheus: ``GET /metrics``, nothing else, bounded.

Loopback by default (``[metrics] listen``; another address needs ``allow_remote = true``). It
carries no policy: the kernel gives no peer identity over TCP, so what it serves is what any
local process may read (the key info's fingerprint is a slow hash for that reason).
"""

from __future__ import annotations

import asyncio
import contextlib

from sidkeyd.metrics import CONTENT_TYPE, Metrics

MAX_REQUEST_BYTES = 8 * 1024
READ_TIMEOUT_S = 5.0
MAX_SCRAPES = 16  # at once: a scrape flood cannot take the loop


async def serve_metrics(host: str, port: int, metrics: Metrics) -> asyncio.Server:
    slots = asyncio.Semaphore(MAX_SCRAPES)

    async def scrape(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if slots.locked():
                return  # too many at once: close without an answer
            async with slots:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_S)
                line = head.split(b"\r\n", 1)[0].split(b" ")
                if len(line) == 3 and line[0] == b"GET" and line[1].split(b"?")[0] == b"/metrics":
                    body, status, kind = metrics.render(), b"200 OK", CONTENT_TYPE.encode()
                else:
                    body, status, kind = b"only GET /metrics\n", b"404 Not Found", b"text/plain"
                writer.write(
                    b"HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
                    b"Connection: close\r\n\r\n%s" % (status, kind, len(body), body)
                )
                await asyncio.wait_for(writer.drain(), READ_TIMEOUT_S)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass  # a slow, oversized or vanished scraper: just close
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    return await asyncio.start_server(scrape, host, port, limit=MAX_REQUEST_BYTES)
