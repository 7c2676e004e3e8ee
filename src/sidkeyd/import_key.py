"""``sidkeyd import-key``: the key from stdin or a file into the environment's remote signer.

The key is read once, held as an ``ApiKey`` (never printed) and handed to the backend's import;
what is shown afterwards is the key version and the fingerprint, as ``status`` shows them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

from sidkeyd.config import Config, VaultSourceConfig
from sidkeyd.errors import ConfigError, ConfigProblem
from sidkeyd.keystore import ApiKey


def read_key(path: Path | None, stdin: TextIO) -> ApiKey:
    """The key: the file's (or stdin's) text without surrounding whitespace; never empty."""
    where = str(path) if path is not None else "stdin"
    try:
        text = path.read_text(encoding="utf-8") if path is not None else stdin.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
        raise ConfigError([ConfigProblem("--key-file", f"cannot read {where}: {reason}")]) from None
    key = text.strip()
    if not key or any(c.isspace() for c in key):
        raise ConfigError(
            [ConfigProblem("--key-file", f"{where} must hold the key alone, on one line")]
        )
    return ApiKey(key)


def transit_target(config: Config, environment: str) -> VaultSourceConfig:
    """The vault source of a transit environment; a ConfigError names what does not fit."""
    env = config.environments.get(environment)
    if env is None:
        raise ConfigError([ConfigProblem("--env", f"no environment {environment!r}")])
    source = config.sources.get(env.source)
    if env.signer != "transit" or not isinstance(source, VaultSourceConfig):
        raise ConfigError([ConfigProblem(f"environments.{environment}.signer", 'is not "transit"')])
    if source.auth.remove_secret_id_file_after_reading:
        raise ConfigError(
            [
                ConfigProblem(
                    f"sources.{source.name}.auth.remove_secret_id_file_after_reading",
                    "import-key would consume the daemon's secret id: use an operator's "
                    "config (auth method token, VAULT_TOKEN)",
                )
            ]
        )
    return source
