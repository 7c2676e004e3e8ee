"""Issue 11.5: a callback signed with a key rotated a second ago verifies.

Smile ID signs its callbacks and job-status answers with the same HMAC. A verify whose
signature matches no key held forces one check of the backend (under the report budget) and is
answered after it; the file source here is rewritten with a new key and nothing else tells the
daemon (no schedule, no SIGHUP).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from support import signatures
from support.configs import file_config, key_file
from support.daemon import Daemon
from support.schedules import NO_SCHEDULE

StartDaemon = Callable[..., Daemon]

OLD_KEY = "callback-e2e-old-key-3a9d-not-real"
NEW_KEY = "callback-e2e-new-key-7c2e-not-real"


# No schedule and a long report budget: only what a test does reaches the backend.
CONFIG = file_config(sections=f'[refresh]\n{NO_SCHEDULE}\nreport_interval = "1h"')


def keys(key: str) -> str:
    return key_file(key)["keys.toml"]


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def test_a_callback_signed_with_a_new_key_verifies_after_one_forced_check(
    start_daemon: StartDaemon,
) -> None:
    """Rotated in the backend only: the callback verifies; key.rotated says trigger verify."""
    daemon = start_daemon(CONFIG, files={"keys.toml": keys(OLD_KEY)})
    (daemon.config_path.parent / "keys.toml").write_text(keys(NEW_KEY))
    timestamp = now()
    callback_signature = signatures.expected_signature(NEW_KEY, timestamp, "085")

    answer = daemon.client().verify("sandbox", timestamp, callback_signature)
    rotated = daemon.wait_for_event("key.rotated", environment="sandbox")

    assert (True, "verify") == (answer["valid"], rotated["trigger"])
    daemon.assert_no_secret_in_logs([OLD_KEY, NEW_KEY])


def test_unmatched_signatures_force_one_check_per_report_interval(
    start_daemon: StartDaemon,
) -> None:
    """Ten forged signatures in a row: all invalid, and only the first reaches the backend."""
    daemon = start_daemon(CONFIG, files={"keys.toml": keys(OLD_KEY)})
    client = daemon.client()
    answers = [client.verify("sandbox", now(), "Zm9yZ2Vk")["valid"] for _ in range(10)]
    daemon.stop()

    forced = daemon.events("refresh.forced", trigger="verify")
    rechecked = [e["rechecked"] for e in daemon.events("signature.verified")]
    assert ([False] * 10, 1) == (answers, len(forced))
    assert [True] + [False] * 9 == rechecked
