"""``sidkeyd audit verify FILE...``: recompute the chain and name the first record that breaks it.

Files are read in the order given (oldest first: ``audit.jsonl.2 audit.jsonl.1 audit.jsonl``)
as one chain. What is and is not detected is in docs/audit.md.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from sidkeyd.audit import CHAIN_FIELD, GENESIS, chain_of

_CHAIN_LENGTH = 64
# Far above any record (about 500 bytes; an admin.reloaded record names at most 100 key paths).
MAX_LINE = 4 * 1024 * 1024


@dataclass(frozen=True)
class Finding:
    """The first problem: where, and what it means."""

    where: str  # FILE:LINE
    seq: int | None
    problem: str

    def __str__(self) -> str:
        seq = "" if self.seq is None else f" (seq {self.seq})"
        return f"{self.where}{seq}: {self.problem}"


@dataclass
class Verdict:
    records: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    head: str | None = None
    skipped: int = 0  # operational log lines between the records
    finding: Finding | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.finding is None


def _lines(paths: Iterable[Path]) -> Iterator[tuple[str, bytes | None, bool]]:
    """(FILE:LINE, the line without its newline, whether it had one), one line in memory at a
    time; a line longer than any record is ``None``, its text never held whole."""
    for path in paths:
        with open_regular(path) as file:
            for number, line in enumerate(iter(lambda: file.readline(MAX_LINE + 1), b""), 1):
                if len(line) > MAX_LINE:  # its newline may be the last byte read
                    yield f"{path}:{number}", None, line.endswith(b"\n") or skip_line(file)
                elif line.endswith(b"\n"):
                    yield f"{path}:{number}", line[:-1], True
                else:
                    yield f"{path}:{number}", line, False


def open_regular(path: Path) -> BinaryIO:
    """``path`` for reading if it is a regular file; a FIFO or a device (``/dev/zero``) would
    block the open or never end, so it is refused as ``OSError`` (ENOTSUP) naming the path."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.ENOTSUP, "not a regular file", str(path))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def skip_line(file: BinaryIO) -> bool:
    """Read past the rest of an overlong line; whether it ended with a newline."""
    while chunk := file.readline(MAX_LINE):
        if chunk.endswith(b"\n"):
            return True
    return False


def _parse(line: bytes) -> tuple[int, str, bytes] | None:
    """(seq, chain, the body the chain covers), or None if this is no record."""
    body, found, rest = line.rpartition(CHAIN_FIELD)
    if not found or len(rest) != _CHAIN_LENGTH + 2 or not rest.endswith(b'"}'):
        return None
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):  # RecursionError: a line nested thousands deep
        return None
    if not isinstance(record, dict) or type(record.get("seq")) is not int:
        return None
    return record["seq"], rest[:_CHAIN_LENGTH].decode("ascii", "replace"), body


def verify(paths: Iterable[Path], checkpoints: Mapping[int, str] | None = None) -> Verdict:
    """Walk the chain; stop at the first problem. ``checkpoints``: seq -> chain from the log."""
    verdict = Verdict()
    expected = dict(checkpoints or {})
    previous_seq: int | None = None
    previous_chain = GENESIS
    lines = _lines(paths)  # one pass: a gap's classification reads on from where it is
    for where, line, whole in lines:
        if not whole:
            verdict.finding = Finding(where, None, "truncated: the last record is incomplete")
            return verdict
        if line is None:
            verdict.finding = Finding(where, None, "modified: not an audit record (overlong)")
            return verdict
        parsed = _parse(line)
        if parsed is None and _operational(line):
            verdict.skipped += 1  # a trail on stdout shares it with the log; a gap still shows
            continue
        if parsed is None:
            verdict.finding = Finding(where, None, "modified: not an audit record")
            return verdict
        seq, chain, body = parsed
        problem = _out_of_order(previous_seq, seq, lines)
        if problem is None and previous_seq is None and seq != 1:
            # Its first link cannot be checked without the record before it.
            verdict.notes.append(f"starts at seq {seq}: earlier records were not given")
        elif problem is None and chain_of(previous_chain, body) != chain:
            problem = (
                "modified: this record's text does not match its chain"
                if previous_seq is not None
                else "modified: the first record does not follow the genesis"
            )
            if previous_seq is not None:
                problem += f" (or seq {previous_seq} before it was rewritten)"
        if problem is not None:
            verdict.finding = Finding(where, seq, problem)
            return verdict
        if seq in expected and expected.pop(seq) != chain:
            verdict.finding = Finding(where, seq, "modified: differs from the logged checkpoint")
            return verdict
        previous_seq, previous_chain = seq, chain
        verdict.records += 1
        verdict.first_seq = seq if verdict.first_seq is None else verdict.first_seq
        verdict.last_seq, verdict.head = seq, chain
    if expected:
        missing = min(expected)
        verdict.finding = Finding(
            "(end)",
            missing,
            "truncated: a logged checkpoint names a record the files do not have",
        )
    return verdict


def _operational(line: bytes) -> bool:
    """An operational log line (JSON with a ``level``, which no record has): one beside a
    trail on stdout, such as the ``audit.checkpoint`` copies."""
    try:
        entry = json.loads(line)
    except (ValueError, RecursionError):
        return False
    return isinstance(entry, dict) and "level" in entry


def _comes_later(seq: int, rest: Iterator[tuple[str, bytes | None, bool]]) -> bool:
    """Whether a record ``seq`` is among the lines left (read on, never kept: the walk
    stops at this problem)."""
    for _where, line, _whole in rest:
        parsed = _parse(line) if line is not None else None
        if parsed is not None and parsed[0] == seq:
            return True
    return False


def _out_of_order(
    previous: int | None, seq: int, rest: Iterator[tuple[str, bytes | None, bool]]
) -> str | None:
    if previous is None or seq == previous + 1:
        return None
    if seq > previous + 1:
        if _comes_later(previous + 1, rest):
            return f"reordered: seq {previous + 1} comes later"
        if previous + 2 == seq:
            return f"deleted: seq {previous + 1} is missing"
        return f"deleted: seq {previous + 1} to {seq - 1} are missing"
    if seq == 1:
        return f"inserted: a new chain starts after seq {previous} (spliced from another run?)"
    return f"inserted or reordered: seq {seq} after seq {previous}"


def parse_checkpoint(text: str) -> tuple[int, str]:
    """``SEQ:CHAIN`` as an ``audit.checkpoint`` log line gives them."""
    seq, _, chain = text.partition(":")
    if not seq.isdigit() or len(chain) != _CHAIN_LENGTH:
        raise ValueError(f"{text!r} is not SEQ:CHAIN (a 64-digit hex chain)")
    return int(seq), chain.lower()


def report(verdict: Verdict) -> str:
    lines = [f"note: {note}" for note in verdict.notes]
    if verdict.skipped:
        lines.append(f"note: skipped {verdict.skipped} operational log line(s)")
    if verdict.finding is not None:
        lines.append(f"FAILED after {verdict.records} good record(s): {verdict.finding}")
    else:
        lines.append(
            f"ok: {verdict.records} record(s), seq {verdict.first_seq} to {verdict.last_seq}, "
            f"head {verdict.head}"
        )
    return "\n".join(lines)
