"""The daemon config most e2e tests start from: one file source, JSON logs, one environment.

start_daemon(file_config(server='shutdown_timeout = "2s"'), files=key_file(KEY))
"""

from __future__ import annotations


def file_config(
    *, server: str = "", sections: str = "", environment: str = "sandbox", extra: str = ""
) -> str:
    """``server``: more ``[server]`` keys; ``sections``: whole tables (``[metrics]``...);
    ``extra``: more keys or tables after the environment's (``[environments.sandbox.allow]``)."""
    return f"""
[server]
socket = "{{socket}}"
{server}

{sections}

[log]
format = "json"

[sources.local]
type = "file"
path = "keys.toml"

[environments.{environment}]
source = "local"
secret = "{environment}"
partner_id = "085"
{extra}
"""


def key_file(key: str, environment: str = "sandbox") -> dict[str, str]:
    """The ``files`` argument of ``start_daemon``: keys.toml holding ``key``."""
    return {"keys.toml": f'[{environment}]\napi_key = "{key}"\n'}
