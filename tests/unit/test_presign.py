"""The presigned table and a remote key version's refills, live calls and refusals."""

from __future__ import annotations

import asyncio
import functools
import math
import threading
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import Executor, Future
from datetime import timedelta
from typing import Any

import pytest

from sidkeyd.config import PresignConfig
from sidkeyd.errors import KeyUnavailableError, RequestError, TransientSourceError
from sidkeyd.presign import PresignedTable, RemoteSigning
from sidkeyd.signing import compute_signature, whole_second
from sidkeyd.threads import DaemonThreadPool

KEY = "unit-presign-key-not-real-0000000000"
NOW = 1_764_576_733.25  # 2025-12-01T08:12:13.250Z


class InlineExecutor(Executor):
    """Runs each call at once in the caller's thread: a refill completes within a loop turn."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
        return future


class FakeSigner:
    """A ``RemoteSigner`` computing the real HMAC locally, counting calls; can be made to fail."""

    backend = "transit"
    version = "1"

    def __init__(self) -> None:
        self.sign_calls: list[int] = []  # batch sizes
        self.verify_calls = 0
        self.down = False

    def sign(self, messages: Sequence[bytes]) -> list[str]:
        self.sign_calls.append(len(messages))
        self._fail_if_down()
        return [_hmac(m) for m in messages]

    def verify(self, message: bytes, signature: str) -> bool:
        self.verify_calls += 1
        self._fail_if_down()
        return _hmac(message) == signature

    def _fail_if_down(self) -> None:
        if self.down:
            raise TransientSourceError("signing: ConnectionError", code="unreachable")


def _hmac(message: bytes) -> str:
    text = message.decode()
    return compute_signature(KEY, text.removesuffix("085sid_request"), "085")


def remote(signer: FakeSigner, clock: list[float], **config: Any) -> RemoteSigning:
    settings = PresignConfig(
        lead=config.get("lead", timedelta(minutes=10)),
        refill_below=config.get("refill_below", timedelta(minutes=5)),
        batch=config.get("batch", 250),
    )
    sleep = config.get("sleep", asyncio.sleep)  # the refill loop's: a test may wake it
    return RemoteSigning(
        "sandbox", "085", signer, settings, InlineExecutor(), clock=lambda: clock[0], sleep=sleep
    )


def asynchronous(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """Run an async test on a fresh event loop (the suite has no asyncio plugin)."""

    @functools.wraps(test)
    def run() -> None:
        asyncio.run(test())

    return run


async def settle() -> None:
    for _ in range(20):  # a refill's calls complete inline; these turns let its awaits resume
        await asyncio.sleep(0)


def test_the_table_extends_prunes_and_says_how_long_it_lasts() -> None:
    """Contiguous batches extend it, past seconds are pruned, a gap starts it afresh."""
    table = PresignedTable()
    table.extend(100, [("t100", "s100"), ("t101", "s101")])
    table.extend(102, [("t102", "s102")])
    table.prune(101)
    kept = (table.get(100), table.get(101), table.signature_of("t102"), table.left_s(101.5))
    table.extend(200, [("t200", "s200")])

    assert (None, ("t101", "s101"), "s102", 1.5) == kept
    assert (1, None, ("t200", "s200")) == (len(table), table.get(102), table.get(200))


@asynchronous
async def test_a_fill_signs_the_lead_in_batches_and_serves_this_second() -> None:
    """600 s in batches of 250: 3 calls; the current whole second's entry is the real HMAC."""
    signer, clock = FakeSigner(), [NOW]
    signing = remote(signer, clock)
    signing.start()
    await settle()
    presigned, lasts_s = signing.presigned(), signing.presigned_for_s()
    signing.retire()

    stamp = whole_second(int(NOW))
    assert [250, 250, 100] == signer.sign_calls
    assert math.ceil(600 / 250) == len(signer.sign_calls)
    assert ("2025-12-01T08:12:13.000Z", compute_signature(KEY, stamp, "085")) == presigned
    assert 599.75 == lasts_s


@asynchronous
async def test_retiring_drops_the_table_at_once() -> None:
    """A rotation retires the old version: nothing presigned with it is served afterwards."""
    signer, clock = FakeSigner(), [NOW]
    signing = remote(signer, clock)
    signing.start()
    await settle()
    signing.retire()

    assert (None, 0.0) == (signing.presigned(), signing.presigned_for_s())


@asynchronous
async def test_a_failed_refill_marks_the_signer_failing_and_an_empty_table_refuses() -> None:
    """With nothing presigned and the backend down: ``presign_exhausted``, not a live try."""
    signer, clock = FakeSigner(), [NOW]
    signer.down = True
    signing = remote(signer, clock)
    signing.start()
    await settle()
    with pytest.raises(KeyUnavailableError) as exhausted:
        signing.presigned()
    failing = signing.failing
    signing.retire()

    assert failing is not None
    assert ("unreachable", "presign_exhausted") == (failing.code, exhausted.value.code)


@asynchronous
async def test_a_presigned_entry_is_served_while_the_backend_is_failing() -> None:
    """Failing changes nothing for the seconds already signed."""
    signer, clock = FakeSigner(), [NOW]
    signing = remote(signer, clock)
    signing.start()
    await settle()
    signing.failing = TransientSourceError("down", code="unreachable")
    clock[0] = NOW + 599
    carried_on = signing.presigned()
    clock[0] = NOW + 600
    with pytest.raises(KeyUnavailableError) as exhausted:
        signing.presigned()
    signing.retire()

    assert whole_second(int(NOW + 599)) == (carried_on or ("", ""))[0]
    assert "presign_exhausted" == exhausted.value.code


@asynchronous
async def test_a_caller_timestamp_is_refused_at_once_while_the_backend_is_failing() -> None:
    """No call is made for it: the refills are what probe the backend."""
    signer, clock = FakeSigner(), [NOW]
    signing = remote(signer, clock)
    signing.failing = TransientSourceError("down", code="unreachable")
    with pytest.raises(KeyUnavailableError) as refused:
        await signing.sign_live("2025-12-01T08:12:13.123Z")

    assert ("signer_unavailable", []) == (refused.value.code, signer.sign_calls)


@asynchronous
async def test_a_live_failure_is_a_precise_503_naming_the_code_only() -> None:
    """The backend's words stay in the log; the caller gets the signer and the code."""
    signer, clock = FakeSigner(), [NOW]
    signer.down = True
    signing = remote(signer, clock)
    with pytest.raises(KeyUnavailableError) as refused:
        await signing.sign_live("2025-12-01T08:12:13.123Z")

    assert "signer_unavailable" == refused.value.code
    assert "(unreachable)" in refused.value.message
    assert "ConnectionError" not in refused.value.message


@asynchronous
async def test_a_presigned_signature_is_verified_from_the_table_without_a_call() -> None:
    """Verify of a presigned timestamp compares in memory; another timestamp is one call."""
    signer, clock = FakeSigner(), [NOW]
    signing = remote(signer, clock)
    signing.start()
    await settle()
    stamp, signature = signing.presigned() or ("", "")
    from_table = await signing.verify(stamp, signature)
    calls_after_table = signer.verify_calls
    live = await signing.verify("2025-12-01T08:12:13.123Z", signature)
    signing.retire()

    assert (True, 0) == (from_table, calls_after_table)
    assert (False, 1) == (live, signer.verify_calls)


class Waker:
    """The refill loop's sleep: it waits until the test wakes it, and records each delay."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self._wake = asyncio.Event()

    async def sleep(self, delay: float) -> None:
        self.delays.append(delay)
        await self._wake.wait()
        self._wake.clear()

    async def wake(self) -> None:
        self._wake.set()
        await settle()


@asynchronous
async def test_the_next_refill_is_due_when_refill_below_is_left_and_tops_up_the_lead() -> None:
    """600 s filled, the loop sleeps 300 s; then it signs only the seconds now missing."""
    signer, clock, waker = FakeSigner(), [NOW], Waker()
    signing = remote(signer, clock, sleep=waker.sleep)
    signing.start()
    await settle()
    clock[0] = NOW + 300
    await waker.wake()
    signing.retire()

    assert [299.75] == waker.delays[:1]
    assert [250, 250, 100, 250, 50] == signer.sign_calls


@asynchronous
async def test_a_clock_stepped_back_starts_the_table_afresh_at_now() -> None:
    """After a step back, the next refill signs from the new now, not after the old table."""
    signer, clock, waker = FakeSigner(), [NOW], Waker()
    signing = remote(signer, clock, sleep=waker.sleep)
    signing.start()
    await settle()
    clock[0] = NOW - 3600
    await waker.wake()
    presigned = signing.presigned()
    signing.retire()

    assert whole_second(int(NOW - 3600)) == (presigned or ("", ""))[0]


class BuggySigner(FakeSigner):
    """A signer that raises what is not a ``SourceError`` (a malformed answer it misread)."""

    def sign(self, messages: Sequence[bytes]) -> list[str]:
        if self.down:
            raise KeyError("Mac")
        return super().sign(messages)


@asynchronous
async def test_a_signer_bug_in_a_refill_marks_it_failing_and_the_loop_refills_after() -> None:
    """An unexpected exception is a failed refill (``signer_bug``), not the loop's end."""
    signer, clock, waker = BuggySigner(), [NOW], Waker()
    signer.down = True
    signing = remote(signer, clock, sleep=waker.sleep)
    signing.start()
    await settle()
    code = signing.failing.code if signing.failing is not None else None
    signer.down = False
    await waker.wake()
    await settle()
    refilled = (signing.failing, signing.presigned_for_s())
    signing.retire()

    assert ("signer_bug", (None, 599.75)) == (code, refilled)


@asynchronous
async def test_a_signer_bug_in_a_live_call_is_a_503_signer_unavailable() -> None:
    """A caller's timestamp meets the bug as a precise 503, not an unexpected exception."""
    signer, clock = BuggySigner(), [NOW]
    signing = remote(signer, clock)
    signer.down = True
    with pytest.raises(KeyUnavailableError) as refused:
        await signing.sign_live(whole_second(int(NOW)))

    assert "signer_unavailable" == refused.value.code


@asynchronous
async def test_a_retired_version_that_was_failing_still_verifies_live() -> None:
    """Retired, no refill can clear ``failing``: the previous key's verify makes its one call."""
    signer, clock = FakeSigner(), [NOW]
    signing = remote(signer, clock)
    signing.failing = TransientSourceError("down", code="unreachable")  # its last refill
    signing.retire()  # a rotation: the backend answered the check again
    stamp = whole_second(int(NOW) - 30)
    valid = await signing.verify(stamp, _hmac(f"{stamp}085sid_request".encode()))

    assert (True, 1) == (valid, signer.verify_calls)


@asynchronous
async def test_a_clock_stepped_past_the_table_is_refilled_at_the_first_miss() -> None:
    """The refill loop sleeps on the loop's clock: a wall-clock step forward would otherwise
    send every request live until that sleep ends (minutes); the first miss wakes it."""
    signer, clock, waker = FakeSigner(), [NOW], Waker()
    signing = remote(signer, clock, sleep=waker.sleep)
    signing.start()
    await settle()
    clock[0] = NOW + 3600  # an NTP step; the loop's sleep of ~300 s is not over
    missed = signing.presigned()
    await settle()
    served = signing.presigned()
    signing.retire()

    assert (None, whole_second(int(NOW + 3600))) == (missed, (served or ("", ""))[0])


class HangingSigner(FakeSigner):
    """Each call waits until the test lets it time out, as a call to a hung backend does."""

    def __init__(self) -> None:
        super().__init__()
        self.timed_out = threading.Event()

    def sign(self, messages: Sequence[bytes]) -> list[str]:
        self.sign_calls.append(len(messages))
        self.timed_out.wait(10)
        raise TransientSourceError("signing: ReadTimeout", code="timeout")


@asynchronous
async def test_live_calls_queued_behind_a_timed_out_one_fail_with_it() -> None:
    """A hung backend: the calls queued behind the first are answered when it times out,
    without each waiting for its own timeout in turn."""
    signer, clock = HangingSigner(), [NOW]
    pool = DaemonThreadPool(1, "test-sign")
    signing = RemoteSigning("sandbox", "085", signer, PresignConfig(), pool, clock=lambda: clock[0])
    stamp = whole_second(int(NOW))
    burst = [asyncio.ensure_future(signing.sign_live(stamp)) for _ in range(3)]
    await asyncio.sleep(0)
    signer.timed_out.set()
    answers = await asyncio.gather(*burst, return_exceptions=True)
    pool.shutdown(wait=False)

    codes = [getattr(answer, "code", answer) for answer in answers]
    assert (["signer_unavailable"] * 3, [1]) == (codes, signer.sign_calls)


class HeldVerifier(FakeSigner):
    """Each verify waits until ``release`` is set: live calls stay outstanding meanwhile."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def verify(self, message: bytes, signature: str) -> bool:
        self.release.wait(10)
        return super().verify(message, signature)


@asynchronous
async def test_a_live_call_past_live_calls_max_is_refused_at_once_as_signer_busy() -> None:
    """Two held verifies fill a bound of 2: the third is a 503 signer_busy (Retry-After 1)
    with no backend call, and once they return a live call is accepted again."""
    signer, clock = HeldVerifier(), [NOW]
    pool = DaemonThreadPool(4, "test-sign")
    signing = RemoteSigning(
        "sandbox", "085", signer, PresignConfig(live_calls_max=2), pool, clock=lambda: clock[0]
    )
    stamp = whole_second(int(NOW) + 3600)  # not presigned: a live verify
    held = [asyncio.ensure_future(signing.verify(stamp, "bogus")) for _ in range(2)]
    await asyncio.sleep(0)
    with pytest.raises(RequestError) as refused:
        await signing.verify(stamp, "bogus")
    signer.release.set()
    answers = await asyncio.gather(*held)
    after = await signing.verify(stamp, "bogus")
    pool.shutdown(wait=False)

    busy = refused.value
    assert ("signer_busy", 503, (("Retry-After", "1"),)) == (busy.code, busy.status, busy.headers)
    assert ([False, False], False, 3) == (answers, after, signer.verify_calls)


@asynchronous
async def test_a_live_call_cancelled_while_queued_gives_its_place_back() -> None:
    """A caller gone before its call ran: the call never runs and its place is free again."""
    signer, clock = HeldVerifier(), [NOW]
    pool = DaemonThreadPool(1, "test-sign")
    signing = RemoteSigning(
        "sandbox", "085", signer, PresignConfig(live_calls_max=2), pool, clock=lambda: clock[0]
    )
    stamp = whole_second(int(NOW) + 3600)
    running = asyncio.ensure_future(signing.verify(stamp, "bogus"))
    queued = asyncio.ensure_future(signing.verify(stamp, "bogus"))
    await asyncio.sleep(0)
    queued.cancel()
    await asyncio.gather(queued, return_exceptions=True)
    await asyncio.sleep(0)  # the cancelled call's release, scheduled on the loop
    outstanding = signing.live_calls.outstanding
    signer.release.set()
    await running
    pool.shutdown(wait=False)

    assert 1 == outstanding


@asynchronous
async def test_refills_run_while_the_live_calls_fill_the_signing_pool() -> None:
    """Live verifies hold every thread of the signing pool and the whole bound: a refill, in
    its own pool and never counted, still fills the table."""
    signer, clock = HeldVerifier(), [NOW]
    pool = DaemonThreadPool(1, "test-sign")
    signing = RemoteSigning(
        "sandbox",
        "085",
        signer,
        PresignConfig(live_calls_max=2),
        pool,
        clock=lambda: clock[0],
        refill_pool=InlineExecutor(),
    )
    stamp = whole_second(int(NOW) + 3600)
    held = [asyncio.ensure_future(signing.verify(stamp, "bogus")) for _ in range(2)]
    await asyncio.sleep(0)
    signing.start()
    await settle()
    presigned = signing.presigned()
    signer.release.set()
    await asyncio.gather(*held)
    signing.retire()
    pool.shutdown(wait=False)

    assert whole_second(int(NOW)) == (presigned or ("",))[0]
