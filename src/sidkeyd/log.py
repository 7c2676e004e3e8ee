"""Structured audit logging with structlog, and the redactor that keeps keys out of it.

``cli`` calls ``configure_logging`` once; everything else just uses ``get_logger()``. A config
reload changes the level through ``set_log_level`` (the format needs a restart: structlog's
loggers cache their processors and output at first use).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from typing import Any, TextIO

import structlog

from sidkeyd.config import LogConfig
from sidkeyd.redaction import REDACTED, backend_text, truncate
from sidkeyd.signing import TimestampClock

__all__ = [
    "REDACTED",
    "configure_logging",
    "get_logger",
    "make_redactor",
    "set_log_level",
    "untrusted",
]

# Field names whose values are never logged, whatever they hold.
SENSITIVE_FIELDS = frozenset(
    {"api_key", "apikey", "key", "secret_value", "secret_string", "token", "password", "secret_id"}
)

SecretsProvider = Callable[[], Iterable[str]]
_PLAIN = frozenset({bool, int, float, type(None)})


class _UtcStamper:
    """structlog's iso/utc TimeStamper, with the per-second prefix cached (hot path)."""

    def __init__(self) -> None:
        self._clock = TimestampClock(digits=6)

    def __call__(
        self, _l: Any, _m: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        event_dict["timestamp"] = self._clock.now()
        return event_dict


class _LevelGate:
    """Drops events below ``level``: a processor, so a reload can change it for loggers already
    cached (a filtering wrapper class would be fixed in each at its first use)."""

    def __init__(self) -> None:
        self.level = logging.INFO

    def __call__(
        self, _l: Any, method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        if _LEVELS.get(method, logging.CRITICAL) < self.level:
            raise structlog.DropEvent
        return event_dict


_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
_LEVELS |= {"warn": logging.WARNING, "error": logging.ERROR, "exception": logging.ERROR}
_LEVEL_GATE = _LevelGate()


def set_log_level(level: str) -> None:
    """``debug``, ``info``, ``warning`` or ``error``, from now on, for every logger."""
    _LEVEL_GATE.level = getattr(logging, level.upper())
    logging.root.setLevel(max(_LEVEL_GATE.level, logging.WARNING))  # libraries' info is noise


def get_logger(**initial: Any) -> Any:
    return structlog.get_logger("sidkeyd", **initial)


def make_redactor(secrets: SecretsProvider) -> structlog.types.Processor:
    """Drop sensitive fields and replace any held key material found inside values."""

    def scrub(value: Any, held: Sequence[str]) -> Any:
        if isinstance(value, bool | int | float) or value is None:
            return value
        if isinstance(value, dict):
            return {
                k: REDACTED if k in SENSITIVE_FIELDS else scrub(v, held) for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return [scrub(item, held) for item in value]
        text = value if isinstance(value, str) else str(value)
        for secret in held:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def redact(
        _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        provided = secrets()
        # The key store's is a tuple of non-empty strings already.
        held = provided if type(provided) is tuple else tuple(s for s in provided if s)
        for name, value in event_dict.items():
            kind = type(value)
            if name in SENSITIVE_FIELDS:
                event_dict[name] = REDACTED
            elif kind is str:  # the common case, inline: no call per field
                for secret in held:
                    if secret in value:
                        value = value.replace(secret, REDACTED)
                event_dict[name] = value
            elif kind not in _PLAIN:
                event_dict[name] = scrub(value, held)
        return event_dict

    return redact


def untrusted(value: str | bytes, limit: int = 128) -> str:
    """A client-supplied string made safe for a log field: decoded, truncated, marked."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "backslashreplace")
    return truncate(value, limit)


_ENCODER = json.JSONEncoder(default=repr)


def _json_encode(obj: Any, **_kw: Any) -> str:
    return _ENCODER.encode(obj)  # one encoder, not one per line as json.dumps(default=...)


class _LibraryLogBridge(logging.Handler):
    """Library records (APScheduler, botocore, urllib3, warnings) as structured events.

    Without it they reach stderr as plain text through logging's last-resort handler. Their
    text is a library's, so it is treated as backend text; tracebacks are reduced to the type.
    """

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields: dict[str, Any] = {
                "logger": record.name,
                "message": backend_text(record.getMessage(), limit=300),
            }
            if record.exc_info and record.exc_info[0] is not None:
                fields["error_type"] = record.exc_info[0].__name__
            get_logger().log(record.levelno, "library.log", **fields)
        except Exception:  # a log line must never break the caller
            self.handleError(record)


# sd-daemon(3) priority prefixes, so that journalctl -p err finds the errors.
_PRIORITY = {"debug": "<7>", "info": "<6>", "warning": "<4>", "error": "<3>", "critical": "<2>"}


def writes_to_journal(stream: TextIO, environ: Mapping[str, str] = os.environ) -> bool:
    """Whether ``stream`` is the journal: ``JOURNAL_STREAM`` names its device and inode."""
    device, _, inode = environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        info = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (
        device.isdigit()
        and inode.isdigit()
        and (info.st_dev, info.st_ino)
        == (
            int(device),
            int(inode),
        )
    )


def _with_syslog_priority(renderer: structlog.types.Processor) -> structlog.types.Processor:
    def render(logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> Any:
        priority = _PRIORITY.get(str(event_dict.get("level", "info")), "<6>")
        return priority + str(renderer(logger, method, event_dict))

    return render


def configure_logging(
    config: LogConfig, secrets: SecretsProvider, stream: TextIO | None = None
) -> None:
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer(serializer=_json_encode)
        if config.format == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    out = stream or sys.stdout
    if writes_to_journal(out):
        renderer = _with_syslog_priority(renderer)
    structlog.configure(
        processors=[
            _LEVEL_GATE,
            structlog.processors.add_log_level,
            _UtcStamper(),
            structlog.processors.format_exc_info,
            make_redactor(secrets),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=True,
    )
    logging.captureWarnings(True)
    logging.root.handlers = [_LibraryLogBridge()]
    set_log_level(config.level)
