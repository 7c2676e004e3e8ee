"""Fixtures shared by every suite. Servers are started by the suite itself, on loopback."""

from support.moto_server import moto_endpoint  # noqa: F401  (fixture)
from support.openbao_server import openbao  # noqa: F401  (fixture)
