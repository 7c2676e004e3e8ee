"""The redactor: no key material reaches a log line, whatever field it hides in."""

from __future__ import annotations

import io
import json

import structlog

from sidkeyd.config import LogConfig
from sidkeyd.log import REDACTED, configure_logging, get_logger, make_redactor, untrusted

SECRET = "redact-me-0123456789"


def redact(event: dict[str, object]) -> dict[str, object]:
    return dict(make_redactor(lambda: [SECRET])(None, "info", event))


def test_held_key_is_replaced_inside_any_string() -> None:
    """The key inside a message, a nested dict or a list becomes [REDACTED]."""
    out = redact(
        {"event": f"x {SECRET} y", "nested": {"a": SECRET}, "items": [f"{SECRET}!"], "n": 3}
    )
    assert f"x {REDACTED} y" == out["event"]
    assert {"a": REDACTED} == out["nested"]
    assert [f"{REDACTED}!"] == out["items"]
    assert 3 == out["n"]


def test_sensitive_field_names_are_dropped() -> None:
    """api_key, token and similar fields are redacted whatever they hold."""
    out = redact({"event": "e", "api_key": "anything", "token": "t", "partner_id": "085"})
    assert (REDACTED, REDACTED, "085") == (out["api_key"], out["token"], out["partner_id"])


def test_objects_are_rendered_then_scrubbed() -> None:
    """A non-string value whose str holds the key is scrubbed too."""

    class Leaky:
        def __str__(self) -> str:
            return f"<{SECRET}>"

    assert f"<{REDACTED}>" == redact({"event": "e", "obj": Leaky()})["obj"]


def test_configured_json_logging_redacts_exceptions() -> None:
    """A traceback mentioning the key is redacted in the rendered JSON line."""
    stream = io.StringIO()
    configure_logging(LogConfig(format="json", level="info"), lambda: [SECRET], stream)
    try:
        try:
            raise ValueError(f"bad {SECRET}")
        except ValueError:
            get_logger().exception("boom")
        line = json.loads(stream.getvalue().splitlines()[-1])
        assert SECRET not in stream.getvalue()
        assert "boom" == line["event"]
    finally:
        structlog.reset_defaults()


def test_untrusted_strings_are_truncated() -> None:
    """Client-supplied values are cut to a bounded length and bytes are decoded."""
    assert 128 + len("...(truncated)") == len(untrusted("x" * 1000))
    assert "\\xff" == untrusted(b"\xff")


def test_library_log_records_become_structured_events() -> None:
    """A library's stdlib log record (APScheduler, botocore) is a JSON line, scrubbed."""
    import logging

    stream = io.StringIO()
    configure_logging(LogConfig(format="json", level="info"), lambda: [SECRET], stream)
    try:
        logging.getLogger("apscheduler.scheduler").warning("job %s missed by %s", SECRET, "1s")
    finally:
        structlog.reset_defaults()
        logging.root.handlers = []
    line = json.loads(stream.getvalue().strip().splitlines()[-1])
    assert ("library.log", "apscheduler.scheduler", "warning") == (
        line["event"],
        line["logger"],
        line["level"],
    )
    assert line["message"].startswith("job ")
    assert SECRET not in stream.getvalue()


def test_lines_to_the_journal_carry_their_syslog_priority(tmp_path) -> None:
    """JOURNAL_STREAM naming the output: <6> before info lines, <3> before errors."""
    import os

    from sidkeyd import log as sidkeyd_log

    path = tmp_path / "journal"
    with path.open("w") as out:
        info = os.fstat(out.fileno())
        old = os.environ.get("JOURNAL_STREAM")
        os.environ["JOURNAL_STREAM"] = f"{info.st_dev}:{info.st_ino}"
        try:
            configure_logging(LogConfig(format="json", level="info"), list, out)
            get_logger().info("an.info")
            get_logger().error("an.error")
        finally:
            structlog.reset_defaults()
            sidkeyd_log.logging.root.handlers = []
            if old is None:
                del os.environ["JOURNAL_STREAM"]
            else:
                os.environ["JOURNAL_STREAM"] = old
    lines = path.read_text().splitlines()
    assert (["<6>", "<3>"], "an.error") == (
        [line[:3] for line in lines],
        json.loads(lines[1][3:])["event"],
    )


def test_lines_elsewhere_have_no_prefix() -> None:
    """Without JOURNAL_STREAM (or naming another file), lines are plain JSON."""
    from sidkeyd.log import writes_to_journal

    stream = io.StringIO()
    assert (False, False) == (
        writes_to_journal(stream, {}),
        writes_to_journal(stream, {"JOURNAL_STREAM": "1:2"}),
    )


def test_set_log_level_reaches_a_logger_already_in_use() -> None:
    """A logger that logged at info drops debug, then after set_log_level("debug") writes it."""
    from sidkeyd.log import set_log_level

    stream = io.StringIO()
    configure_logging(LogConfig(format="json", level="info"), list, stream)
    log = get_logger()
    log.info("first")
    log.debug("hidden")
    set_log_level("debug")
    log.debug("shown")
    set_log_level("info")
    log.debug("hidden again")
    assert ["first", "shown"] == [
        json.loads(line)["event"] for line in stream.getvalue().splitlines()
    ]
