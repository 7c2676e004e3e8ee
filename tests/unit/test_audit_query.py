"""audit query: filters that must all match, a time range, and the auditor's summaries."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sidkeyd.audit import AuditTrail
from sidkeyd.audit_query import Filters, format_summary, parse_time, query, summary
from sidkeyd.config import AuditConfig
from sidkeyd.peer import Peer

ALICE = Peer(pid=os.getpid(), uid=1001, gid=1001, exe="/usr/bin/node")
BOB = Peer(pid=os.getpid(), uid=1002, gid=1002, exe="/usr/bin/python3")


@pytest.fixture
def trail_path(tmp_path: Path) -> Path:
    """alice signs twice with v1 and once with v2, bob once with v1; two refusals."""
    path = tmp_path / "audit.jsonl"
    trail = AuditTrail(AuditConfig(path=path, fsync="never"), lambda: ())
    for version, peer in (("v1", ALICE), ("v1", ALICE), ("v2", ALICE), ("v1", BOB)):
        trail.signature_issued("production", version, "2026-12-01T10:00:00.000Z", peer)
    trail.refused(403, "forbidden", "/v1/sign", BOB)
    trail.refused_repeatedly(403, "forbidden", "/v1/sign", BOB.uid, [BOB.pid], 1)
    trail.refused(404, "unknown_environment", "/v1/sign", ALICE)
    return path


def test_every_filter_given_must_match(trail_path: Path) -> None:
    """uid and key version together: only alice's v1 signatures."""
    matched = query([trail_path], Filters(uid=1001, key_version="v1", event="signature.issued"))
    assert [(1001, "v1")] * 2 == [(r["peer_uid"], r["key_version"]) for r in matched]


def test_executable_and_environment_filters(trail_path: Path) -> None:
    """exe narrows to bob's records; an unknown environment matches nothing."""
    assert 2 == len(query([trail_path], Filters(exe="/usr/bin/python3")))
    assert [] == query([trail_path], Filters(environment="sandbox"))


def test_the_time_range_is_inclusive_then_exclusive(trail_path: Path) -> None:
    """since a minute ago: all; until a minute ago: none; since after now: none."""
    now = datetime.now(UTC)
    assert 7 == len(query([trail_path], Filters(since=now - timedelta(minutes=1))))
    assert [] == query([trail_path], Filters(until=now - timedelta(minutes=1)))
    assert [] == query([trail_path], Filters(since=now + timedelta(minutes=1)))


def test_the_summary_counts_signatures_per_peer_and_version_and_refusals_per_reason(
    trail_path: Path,
) -> None:
    """Grouped and sorted, most first."""
    summarized = summary(query([trail_path], Filters()))
    assert [
        ("v1", 1001, 2),
        ("v2", 1001, 1),
        ("v1", 1002, 1),
    ] == [(r["key_version"], r["peer_uid"], r["count"]) for r in summarized["signatures"]]
    assert [{"reason": "forbidden", "count": 2}, {"reason": "unknown_environment", "count": 1}] == (
        summarized["refusals"]
    )
    assert "       2  forbidden" in format_summary(summarized)


def test_a_time_without_offset_is_refused_and_a_date_is_midnight_utc() -> None:
    """A local time would be a guess; a bare date is not."""
    assert datetime(2026, 12, 1, tzinfo=UTC) == parse_time("2026-12-01")
    with pytest.raises(ValueError, match="offset"):
        parse_time("2026-12-01T10:00")


def test_hostile_lines_are_skipped_or_counted_never_a_crash(tmp_path: Path) -> None:
    """A nesting bomb, a time without an offset, a list for an executable and a count that is
    no number (in no record the daemon writes): the query and its summary still answer."""
    path = tmp_path / "hostile.jsonl"
    path.write_text(
        "[" * 100_000
        + "\n"
        + '{"seq":1,"event":"x","time":"2026-12-01T10:00:00"}\n'
        + '{"seq":2,"event":"signature.issued","time":"2026-12-01T10:00:00Z","peer_exe":["a"]}\n'
        + '{"seq":3,"event":"request.rejected_repeated","time":"2026-12-01T10:00:00Z",'
        + '"reason":"forbidden","repeated":"many"}\n'
    )
    matched = query([path], Filters(since=parse_time("2026-12-01")))
    summarized = summary(matched)
    assert [2, 3] == [r["seq"] for r in matched]
    assert ('["a"]', [{"reason": "forbidden", "count": 0}]) == (
        summarized["signatures"][0]["peer_exe"],
        summarized["refusals"],
    )


def test_a_line_verify_skips_as_operational_is_not_counted(trail_path: Path) -> None:
    """A forged signature line with a ``level`` passes `audit verify` as an operational log
    line (unchained), so `audit query` must not count it as a signature either."""
    with trail_path.open("a") as file:
        file.write(
            '{"seq":99,"event":"signature.issued","level":"info","environment":"production",'
            '"key_version":"v1","peer_uid":1001,"peer_user":null,"peer_exe":"/usr/bin/node"}\n'
        )
    matched = query([trail_path], Filters(event="signature.issued"))
    assert 4 == len(matched)
