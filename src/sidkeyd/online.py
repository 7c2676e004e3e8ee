"""``check-config --online``: authenticate to each source and read each secret once.

Each environment's secret is read in full, as the daemon's first load would, and judged as the
daemon would judge it (partner id included). The result names the key version or the error's
code and reason; a key is never shown (reasons are scrubbed of every key read).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from sidkeyd.checks import check_key_version, resolve_partner_id
from sidkeyd.config import Config
from sidkeyd.errors import SourceError
from sidkeyd.log import get_logger
from sidkeyd.redaction import backend_text
from sidkeyd.sources import RemoteKey, SecretValue, Source, build_source
from sidkeyd.sources.lifecycle import close_sources

CLOSE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Probe:
    environment: str
    key_version: str | None = None
    error_code: str | None = None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.error_code is None


def probe(config: Config, read_keys: list[str]) -> list[Probe]:
    """Read every environment's secret once; ``read_keys`` gets each key read (for the
    redactor of the caller's log), in memory only."""
    sources: dict[str, Source] = {}
    results = []
    try:
        for name, environment in config.environments.items():
            try:
                source = sources.get(environment.source)
                if source is None:
                    source = sources[environment.source] = build_source(
                        config.sources[environment.source]
                    )
                value = source.fetch(environment, None)
                if isinstance(value, RemoteKey):  # the backend signs: there is no key to read
                    results.append(Probe(name, key_version=value.version))
                    continue
                assert isinstance(value, SecretValue)  # a full read never answers Unchanged
                read_keys.append(value.api_key.reveal())
                check_key_version(value)
                resolve_partner_id(environment, value)
                results.append(Probe(name, key_version=value.version))
            except SourceError as exc:
                exc.scrub(read_keys)
                results.append(Probe(name, error_code=exc.code, reason=exc.reason))
            except Exception as exc:  # a source bug: said, not raised
                reason = backend_text(f"unexpected {type(exc).__name__}", read_keys)
                results.append(Probe(name, error_code="source_bug", reason=reason))
    finally:
        asyncio.run(close_sources(sources, CLOSE_TIMEOUT_S, get_logger()))
    return results
