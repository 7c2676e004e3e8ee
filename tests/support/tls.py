"""A TLS peer that misbehaves on purpose, for the sources' transient-error tests."""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

WAIT_S = 10.0


@contextmanager
def tls_hangup_url() -> Iterator[str]:
    """An https URL whose server reads the TLS ClientHello and hangs up: a handshake cut short."""

    class HangUp(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            self.request.settimeout(WAIT_S)
            self.request.recv(4096)
            self.request.shutdown(socket.SHUT_WR)  # EOF, then wait for the client to go
            with suppress(OSError):
                self.request.recv(4096)

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), HangUp)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="tls-hangup", daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(WAIT_S)
