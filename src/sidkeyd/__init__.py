"""sidkeyd: Smile ID request signatures served over a Unix socket, keys held only in memory."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("sidkeyd")  # one source: the package metadata (pyproject.toml)
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
