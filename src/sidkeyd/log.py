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
from sidkeyd.outlet import LineOutlet
from sidkeyd.redaction import REDACTED, backend_text, truncate
from sidkeyd.signing import TimestampClock

__all__ = [
    "REDACTED",
    "configure_logging",
    "get_logger",
    "make_redactor",
    "set_log_level",
    "stdout_outlet",
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


class _Level:
    value = logging.INFO  # the level in force; set_log_level changes it


_NAMES = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warning"}
_NAMES |= {logging.ERROR: "error", logging.CRITICAL: "critical"}


class _LevelledLogger(structlog.BoundLoggerBase):
    """structlog's bound logger, filtering at each call by the level in force: loggers are
    cached at first use, so a level fixed in their class (make_filtering_bound_logger) could
    not follow a reload. A call below the level returns before any processor runs."""

    def _at(self, level: int, name: str, event: str | None, kw: dict[str, Any]) -> Any:
        if level < _Level.value:
            return None
        return self._proxy_to_logger(name, event, **kw)

    def debug(self, event: str | None = None, **kw: Any) -> Any:
        return self._at(logging.DEBUG, "debug", event, kw)

    def info(self, event: str | None = None, **kw: Any) -> Any:
        return self._at(logging.INFO, "info", event, kw)

    def warning(self, event: str | None = None, **kw: Any) -> Any:
        return self._at(logging.WARNING, "warning", event, kw)

    warn = warning

    def error(self, event: str | None = None, **kw: Any) -> Any:
        return self._at(logging.ERROR, "error", event, kw)

    def critical(self, event: str | None = None, **kw: Any) -> Any:
        return self._at(logging.CRITICAL, "critical", event, kw)

    def exception(self, event: str | None = None, **kw: Any) -> Any:
        kw.setdefault("exc_info", True)
        return self._at(logging.ERROR, "error", event, kw)

    def log(self, level: int, event: str | None = None, **kw: Any) -> Any:
        """A library record's level: named by the standard level at or below it."""
        name = next((n for at, n in sorted(_NAMES.items(), reverse=True) if level >= at), "debug")
        return self._at(level, name, event, kw)


def set_log_level(level: str) -> None:
    """``debug``, ``info``, ``warning`` or ``error``, from now on, for every logger."""
    _Level.value = getattr(logging, level.upper())
    logging.root.setLevel(max(_Level.value, logging.WARNING))  # libraries' info is noise


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


class _OutletLogger:
    """structlog's logger over a ``LineOutlet``: a line stdout cannot take now is dropped.

    The operational log never blocks the daemon (a pipe nobody reads) nor stops it (a closed
    pipe); what it dropped is counted and said in a ``log.lines_dropped`` line once stdout
    takes lines again. The audit trail, not this log, is what must not lose a record.
    """

    def __init__(self, outlet: LineOutlet) -> None:
        self.outlet = outlet
        self._reported = 0

    def msg(self, message: str) -> None:
        outlet = self.outlet
        if outlet.dropped != self._reported and not outlet.backlogged:
            dropped, self._reported = outlet.dropped - self._reported, outlet.dropped
            notice = {"event": "log.lines_dropped", "level": "warning", "count": dropped}
            outlet.offer(_json_encode(notice).encode() + b"\n")
        outlet.offer(message.encode("utf-8", "backslashreplace") + b"\n")

    log = debug = info = warn = warning = err = error = critical = exception = fatal = msg


_stdout_outlet: LineOutlet | None = None


def stdout_outlet() -> LineOutlet:
    """The one writer of fd 1, shared by the operational log and an audit trail on stdout."""
    global _stdout_outlet
    if _stdout_outlet is None:
        _stdout_outlet = LineOutlet(1, max_queued_lines=1024)
    return _stdout_outlet


def configure_logging(
    config: LogConfig, secrets: SecretsProvider, stream: TextIO | None = None
) -> None:
    """Without ``stream``, lines go to fd 1 through the non-blocking ``stdout_outlet``."""
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer(serializer=_json_encode)
        if config.format == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    out = stream or sys.stdout
    if writes_to_journal(out):
        renderer = _with_syslog_priority(renderer)
    if stream is not None:
        factory: Any = structlog.WriteLoggerFactory(file=stream)
    else:
        shared = _OutletLogger(stdout_outlet())  # one, so drops are reported once
        factory = lambda *_args: shared  # noqa: E731 - structlog wants a callable factory

    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            _UtcStamper(),
            structlog.processors.format_exc_info,
            make_redactor(secrets),
            renderer,
        ],
        wrapper_class=_LevelledLogger,
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    logging.captureWarnings(True)
    logging.root.handlers = [_LibraryLogBridge()]
    set_log_level(config.level)
