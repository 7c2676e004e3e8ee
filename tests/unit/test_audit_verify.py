"""audit verify: the first modified, deleted, inserted, reordered or truncated record."""

from __future__ import annotations

import json
import os
import tracemalloc
from pathlib import Path

from sidkeyd.audit import CHAIN_FIELD, GENESIS, AuditTrail, chain_of
from sidkeyd.audit_verify import parse_checkpoint, verify
from sidkeyd.config import AuditConfig
from sidkeyd.peer import Peer

PEER = Peer(pid=os.getpid(), uid=os.getuid(), gid=os.getgid(), exe="/usr/bin/python3")


def trail_file(path: Path, signatures: int = 4) -> list[bytes]:
    """A real trail's file with ``signatures`` records after its audit.opened."""
    trail = AuditTrail(AuditConfig(path=path, fsync="never"), lambda: ())
    trail.record("audit.opened", ',"result":"ok"', must=False)
    for n in range(signatures):
        trail.signature_issued("sandbox", "v1", f"2026-12-01T10:00:0{n}.000Z", PEER)
    return path.read_bytes().splitlines(keepends=True)


def write(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"".join(lines))
    return path


def problem(paths: list[Path], **kw: object) -> tuple[str | None, int | None, str]:
    verdict = verify(paths, **kw)  # type: ignore[arg-type]
    assert verdict.finding is not None, "no problem found"
    return verdict.finding.where.rsplit(":", 1)[-1], verdict.finding.seq, verdict.finding.problem


def test_a_clean_trail_verifies_across_rotated_files(tmp_path: Path) -> None:
    """Files in order form one chain: every record counted, the head named."""
    lines = trail_file(tmp_path / "audit.jsonl")
    old = write(tmp_path / "audit.jsonl.1", lines[:2])
    new = write(tmp_path / "audit.jsonl", lines[2:])
    verdict = verify([old, new])
    assert (True, 5, 1, 5) == (verdict.ok, verdict.records, verdict.first_seq, verdict.last_seq)
    assert json.loads(lines[-1])["chain"] == verdict.head


def test_an_edited_record_is_named(tmp_path: Path) -> None:
    """One field changed in record 3: its text no longer matches its chain."""
    lines = trail_file(tmp_path / "audit.jsonl")
    lines[2] = lines[2].replace(b'"peer_uid":', b'"peer_uid":1')
    where, seq, text = problem([write(tmp_path / "edited.jsonl", lines)])
    assert ("3", 3) == (where, seq)
    assert text.startswith("modified")


def test_a_deleted_record_is_named(tmp_path: Path) -> None:
    """Record 3 removed: record 4 says 3 is missing."""
    lines = trail_file(tmp_path / "audit.jsonl")
    del lines[2]
    assert ("3", 4, "deleted: seq 3 is missing") == problem(
        [write(tmp_path / "deleted.jsonl", lines)]
    )


def test_reordered_records_are_named(tmp_path: Path) -> None:
    """Records 3 and 4 swapped: the first out of place is named."""
    lines = trail_file(tmp_path / "audit.jsonl")
    lines[2], lines[3] = lines[3], lines[2]
    where, seq, text = problem([write(tmp_path / "swapped.jsonl", lines)])
    assert ("3", 4, "reordered: seq 3 comes later") == (where, seq, text)


def test_an_inserted_copy_is_named(tmp_path: Path) -> None:
    """Record 2 repeated after record 3: inserted."""
    lines = trail_file(tmp_path / "audit.jsonl")
    lines.insert(3, lines[1])
    assert ("4", 2, "inserted or reordered: seq 2 after seq 3") == problem(
        [write(tmp_path / "inserted.jsonl", lines)]
    )


def test_a_file_spliced_from_two_runs_is_named(tmp_path: Path) -> None:
    """The tail of another trail's file after this one's head: the chain does not follow."""
    ours = trail_file(tmp_path / "ours.jsonl")
    theirs = trail_file(tmp_path / "theirs.jsonl")
    spliced = write(tmp_path / "spliced.jsonl", ours[:3] + theirs[3:])
    where, seq, text = problem([spliced])
    assert ("4", 4) == (where, seq)
    assert text.startswith("modified")


def test_a_cut_last_line_is_truncated(tmp_path: Path) -> None:
    """A file ending inside a record: truncated."""
    lines = trail_file(tmp_path / "audit.jsonl")
    lines[-1] = lines[-1][:40]
    assert ("5", None, "truncated: the last record is incomplete") == problem(
        [write(tmp_path / "cut.jsonl", lines)]
    )


def test_a_rewritten_chain_is_caught_only_by_a_logged_checkpoint(tmp_path: Path) -> None:
    """Record 2 edited and every chain after it recomputed: the chain is whole again, but the
    checkpoint from the operational log no longer matches."""
    lines = trail_file(tmp_path / "audit.jsonl")
    logged = json.loads(lines[-1])
    lines[1] = lines[1].replace(b'"peer_uid":', b'"peer_uid":1')
    rewritten, previous = [], GENESIS
    for line in lines:
        body = line.rpartition(CHAIN_FIELD)[0]
        previous = chain_of(previous, body)
        rewritten.append(body + CHAIN_FIELD + previous.encode() + b'"}\n')
    path = write(tmp_path / "rewritten.jsonl", rewritten)
    assert verify([path]).ok
    checkpoints = dict([parse_checkpoint(f"{logged['seq']}:{logged['chain']}")])
    assert ("5", 5) == problem([path], checkpoints=checkpoints)[:2]


def test_records_cut_from_the_end_are_caught_by_a_later_checkpoint(tmp_path: Path) -> None:
    """The last two records removed whole: only a checkpoint past the end shows it."""
    lines = trail_file(tmp_path / "audit.jsonl")
    logged = json.loads(lines[-1])
    path = write(tmp_path / "short.jsonl", lines[:-2])
    assert verify([path]).ok
    found = problem([path], checkpoints={logged["seq"]: logged["chain"]})
    assert ("(end)", 5) == found[:2]
    assert found[2].startswith("truncated")


def test_operational_log_lines_between_records_are_skipped_but_gaps_still_show(
    tmp_path: Path,
) -> None:
    """A trail on stdout shares the stream with the log: log lines are skipped, a record
    replaced by one is still a deletion."""
    lines = trail_file(tmp_path / "audit.jsonl")
    log_line = b'{"event": "daemon.started", "level": "info"}\n'
    mixed = write(tmp_path / "mixed.jsonl", [lines[0], log_line, *lines[1:]])
    assert (True, 1) == (verify([mixed]).ok, verify([mixed]).skipped)
    lines[2] = log_line
    assert ("4", 4, "deleted: seq 3 is missing") == problem([write(tmp_path / "gap.jsonl", lines)])


def test_a_line_nested_thousands_deep_is_named_not_a_crash(tmp_path: Path) -> None:
    """A JSON nesting bomb in place of record 3 (shaped as a record, and not): a finding."""
    lines = trail_file(tmp_path / "audit.jsonl")
    for bomb in (b"[" * 100_000 + b"\n", b'{"a":' * 100_000 + CHAIN_FIELD + b"0" * 64 + b'"}\n'):
        lines[2] = bomb
        where, seq, text = problem([write(tmp_path / "bomb.jsonl", lines)])
        assert ("3", None, "modified: not an audit record") == (where, seq, text)


def big_trail(path: Path, records: int) -> Path:
    """A valid chain of ``records`` records of about 500 bytes each, written line by line."""
    chain, pad = GENESIS, "x" * 440
    with path.open("wb") as file:
        for seq in range(1, records + 1):
            body = f'{{"seq":{seq},"event":"signature.issued","pad":"{pad}"'.encode()
            chain = chain_of(chain, body)
            file.write(body + CHAIN_FIELD + chain.encode() + b'"}\n')
    return path


def test_a_large_trail_is_verified_with_memory_far_below_its_size(tmp_path: Path) -> None:
    """An 8 MB file verifies with under 1 MB allocated at the peak: it is read a line at a
    time, never whole (reading it whole took about 2.6 times its size)."""
    path = big_trail(tmp_path / "audit.jsonl", 16_000)
    tracemalloc.start()
    try:
        verdict = verify([path])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (True, 16_000) == (verdict.ok, verdict.records)
    assert path.stat().st_size > 8_000_000
    assert peak < 1_000_000


def test_a_record_moved_into_a_later_file_is_still_reordered(tmp_path: Path) -> None:
    """Record 3 moved to the end of the next file: read on from the gap, it is found later."""
    lines = trail_file(tmp_path / "audit.jsonl")
    old = write(tmp_path / "audit.jsonl.1", [*lines[:2], lines[3]])
    new = write(tmp_path / "audit.jsonl", [*lines[4:], lines[2]])
    assert ("3", 4, "reordered: seq 3 comes later") == problem([old, new])


def test_a_line_longer_than_any_record_is_named_not_a_record(tmp_path: Path) -> None:
    """A 5 MiB line between two records: 'not an audit record' at its line, without the
    lines after it taken for it."""
    lines = trail_file(tmp_path / "audit.jsonl")
    lines.insert(2, b"y" * (5 * 1024 * 1024) + b"\n")
    assert ("3", None, "modified: not an audit record (overlong)") == problem(
        [write(tmp_path / "long.jsonl", lines)]
    )


def test_an_overlong_line_ending_at_the_read_limit_does_not_swallow_the_next_line(
    tmp_path: Path,
) -> None:
    """A line whose newline is the last byte of the bounded read, then a cut last record:
    the overlong line is named as such, not taken for the cut record ('truncated')."""
    lines = trail_file(tmp_path / "audit.jsonl", signatures=1)
    lines.insert(1, b"y" * (4 * 1024 * 1024) + b"\n")
    lines[-1] = lines[-1][:-10]
    assert ("2", None, "modified: not an audit record (overlong)") == problem(
        [write(tmp_path / "long.jsonl", lines)]
    )
