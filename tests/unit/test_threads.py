"""The fetch pool: results and errors reach the waiter, and no worker holds up the exit."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from sidkeyd.threads import DaemonThreadPool


def test_results_and_exceptions_reach_the_future() -> None:
    """A result is returned; an exception is raised from ``result()``."""
    pool = DaemonThreadPool(2, "t")
    assert 3 == pool.submit(lambda: 1 + 2).result(5)
    with pytest.raises(ZeroDivisionError):
        pool.submit(lambda: 1 / 0).result(5)
    pool.shutdown()


def test_workers_are_daemon_threads_and_bounded() -> None:
    """No more workers than asked for, every one a daemon thread."""
    pool = DaemonThreadPool(2, "t")
    gate = threading.Event()
    futures = [pool.submit(gate.wait, 5) for _ in range(5)]
    workers = [t for t in threading.enumerate() if t.name.startswith("t-")]
    gate.set()
    assert [True] * 5 == [f.result(5) for f in futures]
    pool.shutdown()
    assert (2, True) == (len(workers), all(t.daemon for t in workers))


def test_cancelled_work_never_runs_after_shutdown() -> None:
    """shutdown(cancel_futures=True) cancels what was queued; submit then refuses."""
    pool = DaemonThreadPool(1, "t")
    gate = threading.Event()
    running = pool.submit(gate.wait, 5)
    queued = pool.submit(lambda: "ran")
    pool.shutdown(wait=False, cancel_futures=True)
    gate.set()
    assert (True, True) == (queued.cancelled(), running.result(5))
    with pytest.raises(RuntimeError):
        pool.submit(lambda: None)


def test_a_stuck_call_does_not_hold_the_interpreter_exit() -> None:
    """A process whose worker is stuck in a call exits at once (the stdlib pool would wait)."""
    code = (
        "import threading, time\n"
        "from sidkeyd.threads import DaemonThreadPool\n"
        "pool = DaemonThreadPool(1, 'stuck')\n"
        "pool.submit(time.sleep, 3600)\n"
        "pool.shutdown(wait=False, cancel_futures=True)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], timeout=30, check=False)
    assert 0 == done.returncode
