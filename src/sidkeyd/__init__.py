"""sidkeyd: Smile ID request signatures served over a Unix socket, keys held only in memory."""

__version__ = "0.1.0"
