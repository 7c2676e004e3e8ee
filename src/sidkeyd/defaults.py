"""Where sidkeyd looks by default: one home, shared by the daemon, the CLI and the client.

Standard library only (``sidkeyd.client`` imports it).
"""

from pathlib import Path

DEFAULT_CONFIG_PATH = Path("/etc/sidkeyd/sidkeyd.toml")
DEFAULT_SOCKET_PATH = Path("/run/sidkeyd/sidkeyd.sock")
