"""The server's connections as a whole: the limits every connection obeys, and the tracker
that enforces the connection caps (in all and per uid) and drains them at shutdown.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from typing import Protocol

from sidkeyd.peer import Peer


class Connection(Protocol):
    """What the tracker needs of a connection (``transport.HttpProtocol``)."""

    @property
    def peer(self) -> Peer: ...

    def close_when_idle(self) -> None: ...

    def abort(self) -> None: ...


@dataclass(frozen=True)
class Limits:
    max_header_bytes: int
    max_body_bytes: int
    read_timeout_s: float
    idle_timeout_s: float
    write_timeout_s: float = 10.0


class ConnectionTracker:
    """The server's view of its open connections, for limits and graceful shutdown."""

    def __init__(self, max_connections: int, max_connections_per_uid: int | None = None) -> None:
        self.max_connections = max_connections
        self.max_connections_per_uid = max_connections_per_uid or max_connections
        self.connections: set[Connection] = set()
        self._per_uid: Counter[int] = Counter()
        self.closing = False
        self.drained = asyncio.Event()
        self.drained.set()

    def refusal(self, peer: Peer) -> tuple[str, str] | None:
        """Why a new connection from ``peer`` must be refused, as (code, message), or None."""
        if self.closing or len(self.connections) >= self.max_connections:
            return "too_many_connections", "connection limit reached"
        if self._per_uid[peer.uid] >= self.max_connections_per_uid:
            return "too_many_connections_for_uid", "connection limit for this uid reached"
        return None

    def add(self, protocol: Connection) -> None:
        self.connections.add(protocol)
        self._per_uid[protocol.peer.uid] += 1
        self.drained.clear()

    def remove(self, protocol: Connection) -> None:
        if protocol not in self.connections:
            return  # a refused connection was never added
        self.connections.remove(protocol)
        uid = protocol.peer.uid
        self._per_uid[uid] -= 1
        if not self._per_uid[uid]:
            del self._per_uid[uid]
        if not self.connections:
            self.drained.set()

    def shutdown(self) -> None:
        """Close idle connections now; busy ones close after their current response."""
        self.closing = True
        for protocol in list(self.connections):
            protocol.close_when_idle()

    def abort(self) -> None:
        for protocol in list(self.connections):
            protocol.abort()
