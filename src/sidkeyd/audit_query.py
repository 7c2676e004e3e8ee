"""``sidkeyd audit query FILE...``: the records an auditor asks for, or their summary.

"Who signed for production with key version V between T1 and T2" is
``audit query audit.jsonl --env production --key-version V --since T1 --until T2 --summary``.
Lines that are no audit record (the operational log beside a trail on stdout) are skipped.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sidkeyd.audit_verify import MAX_LINE, open_regular, skip_line

Record = dict[str, Any]


@dataclass(frozen=True)
class Filters:
    environment: str | None = None
    event: str | None = None
    uid: int | None = None
    user: str | None = None
    exe: str | None = None
    key_version: str | None = None
    since: datetime | None = None  # inclusive
    until: datetime | None = None  # exclusive

    def match(self, record: Record) -> bool:
        wanted = (
            ("environment", self.environment),
            ("event", self.event),
            ("peer_uid", self.uid),
            ("peer_user", self.user),
            ("peer_exe", self.exe),
            ("key_version", self.key_version),
        )
        if any(value is not None and record.get(name) != value for name, value in wanted):
            return False
        if self.since is None and self.until is None:
            return True
        when = record_time(record)
        if when is None:
            return False
        return (self.since is None or when >= self.since) and (
            self.until is None or when < self.until
        )


def parse_time(text: str) -> datetime:
    """An ISO 8601 date-time with an offset or Z (a date alone is midnight UTC)."""
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        if "T" in text:
            raise ValueError(f"{text!r} has no UTC offset; add Z or +HH:MM")
        value = datetime.fromisoformat(text + "T00:00:00+00:00")
    return value


def record_time(record: Record) -> datetime | None:
    """The record's time, or None when it has none with an offset (no record the daemon
    writes lacks one; a naive time cannot be compared with ``--since``)."""
    try:
        when = datetime.fromisoformat(str(record["time"]))
    except (KeyError, ValueError):
        return None
    return when if when.tzinfo is not None else None


def records(paths: Iterable[Path]) -> Iterator[Record]:
    for path in paths:
        with open_regular(path) as file:
            for line in iter(lambda: file.readline(MAX_LINE + 1), b""):
                if len(line) > MAX_LINE:  # no record is this long: `audit verify` names it
                    if not line.endswith(b"\n"):
                        skip_line(file)
                    continue
                try:
                    record = json.loads(line)
                except (ValueError, RecursionError):
                    continue  # a truncated last line, a nesting bomb: `audit verify` reports it
                if _is_record(record):
                    yield record


def _is_record(entry: object) -> bool:
    """What ``audit verify`` checks as a record: a line with a ``level`` is the operational
    log's (``audit verify`` skips it unchained), so counting it would let a forged line in."""
    return isinstance(entry, dict) and "seq" in entry and "event" in entry and "level" not in entry


def query(paths: Iterable[Path], filters: Filters) -> list[Record]:
    return [record for record in records(paths) if filters.match(record)]


SIGNATURE_KEYS = ("environment", "key_version", "peer_uid", "peer_user", "peer_exe")


def summary(matched: Iterable[Record]) -> dict[str, list[dict[str, Any]]]:
    """Signatures per peer and key version; refusals per reason (most first)."""
    signatures: Counter[tuple[Any, ...]] = Counter()
    refusals: Counter[str] = Counter()
    for record in matched:
        if record.get("event") == "signature.issued":
            signatures[tuple(_hashable(record.get(k)) for k in SIGNATURE_KEYS)] += 1
        elif record.get("event") == "request.rejected":
            refusals[str(record.get("reason"))] += 1
        elif record.get("event") == "request.rejected_repeated":
            repeated = record.get("repeated")
            refusals[str(record.get("reason"))] += repeated if type(repeated) is int else 0
    return {
        "signatures": [
            {**dict(zip(SIGNATURE_KEYS, key, strict=True)), "count": count}
            for key, count in signatures.most_common()
        ],
        "refusals": [
            {"reason": reason, "count": count} for reason, count in refusals.most_common()
        ],
    }


def _hashable(value: Any) -> Any:
    """A field as a summary key: a list or object (in no record the daemon writes) as text."""
    return json.dumps(value) if isinstance(value, list | dict) else value


def format_record(record: Record) -> str:
    peer = f"uid {record.get('peer_uid')} ({record.get('peer_user')}) {record.get('peer_exe')}"
    what = " ".join(
        str(record[k]) for k in ("environment", "key_version", "reason") if record.get(k)
    )
    return f"{record.get('time')} #{record.get('seq')} {record.get('event')} " + (
        f"{record.get('result')} {what} {peer}"
        if "peer_uid" in record
        else f"{record.get('result')}"
    )


def format_summary(summarized: dict[str, list[dict[str, Any]]]) -> str:
    lines = ["signatures per peer and key version:"]
    for row in summarized["signatures"]:
        lines.append(
            f"  {row['count']:>8}  {row['environment']} {row['key_version']}  "
            f"uid {row['peer_uid']} ({row['peer_user']}) {row['peer_exe']}"
        )
    lines.append("refusals per reason:")
    lines.extend(f"  {row['count']:>8}  {row['reason']}" for row in summarized["refusals"])
    return "\n".join(lines)
