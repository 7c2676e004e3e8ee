"""Remote signing for one key version: presigned whole seconds and live calls, off the loop.

A remote signer's call is a network round trip. ``RemoteSigning`` keeps a ``PresignedTable``
of the signatures of the coming whole seconds (``...T07:52:13.000Z``, the daemon's timestamp
format at ``.000``), refilled in batches in the signing pool before it runs low, so that a
request without a timestamp is answered from memory with no network call. A request with its
own timestamp, and a verify of anything not in the table, is one call in the pool, within the
environment's ``LiveCalls`` bound (past it: ``503 signer_busy``). Refills run in a pool of their
own when given one, so that a flood of live calls cannot delay them.

It belongs to one ``KeySnapshot``: a rotation installs a new snapshot with an empty table and
``retire()``s the old one, whose table is dropped at once. While the backend fails, the table
serves until it runs out, then ``presign_exhausted``; caller timestamps are refused at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from typing import TypeVar

from sidkeyd.backoff import Backoff
from sidkeyd.config import PresignConfig
from sidkeyd.errors import KeyUnavailableError, RequestError, SourceError, TransientSourceError
from sidkeyd.log import get_logger
from sidkeyd.signers import RemoteSigner
from sidkeyd.signing import signed_message, whole_second

# After a failed refill: retry within 1 s, doubling to 30 s, so that recovery is seen soon.
REFILL_BACKOFF = Backoff(1.0, 30.0)
T = TypeVar("T")


class PresignedTable:
    """Signatures of consecutive whole seconds ``[start, end)``. Event loop only."""

    __slots__ = ("_by_second", "_by_timestamp", "end", "start")

    def __init__(self) -> None:
        self._by_second: dict[int, tuple[str, str]] = {}  # second -> (timestamp, signature)
        self._by_timestamp: dict[str, str] = {}  # for verify
        self.start = self.end = 0

    def __len__(self) -> int:
        return len(self._by_second)

    def get(self, second: int) -> tuple[str, str] | None:
        return self._by_second.get(second)

    def signature_of(self, timestamp: str) -> str | None:
        return self._by_timestamp.get(timestamp)

    def extend(self, first: int, signed: Sequence[tuple[str, str]]) -> None:
        """Add the (timestamp, signature) of ``first``, ``first + 1``...; a gap starts afresh."""
        if first != self.end:
            self.clear()
            self.start = first
        for offset, entry in enumerate(signed):
            self._by_second[first + offset] = entry
            self._by_timestamp[entry[0]] = entry[1]
        self.end = first + len(signed)

    def prune(self, before: int) -> None:
        """Forget the seconds before ``before``: past, never served again."""
        for second in range(self.start, min(before, self.end)):
            timestamp, _ = self._by_second.pop(second)
            del self._by_timestamp[timestamp]
        self.start = max(self.start, min(before, self.end))

    def left_s(self, now: float) -> float:
        """How long the table lasts from ``now`` without a refill."""
        return self.end - now if self.start <= now < self.end else 0.0

    def clear(self) -> None:
        self._by_second.clear()
        self._by_timestamp.clear()
        self.start = self.end = 0


class LiveCalls:
    """One environment's live backend calls outstanding (queued or running in the pool), at
    most ``limit``: a flood on one environment cannot fill the shared pool's queue ahead of
    another's. Shared by the environment's key versions. Event loop only."""

    __slots__ = ("limit", "outstanding")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.outstanding = 0

    def take(self, environment: str) -> None:
        """One more call, or ``503 signer_busy`` (``Retry-After: 1``) when ``limit`` are out."""
        if self.outstanding >= self.limit:
            raise RequestError(
                "signer_busy",
                f"{self.limit} live signer calls are already outstanding for {environment!r}; "
                "retry in a second, or sign without a timestamp (presigned)",
                status=503,
                headers=(("Retry-After", "1"),),
            )
        self.outstanding += 1

    def release(self) -> None:
        self.outstanding -= 1


class RemoteSigning:
    """One remote key version's table, refill task and live calls, for the sign path."""

    def __init__(
        self,
        environment: str,
        partner_id: str,
        signer: RemoteSigner,
        config: PresignConfig,
        pool: Executor,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        live_calls: LiveCalls | None = None,
        refill_pool: Executor | None = None,
    ) -> None:
        self.environment = environment
        self.signer = signer
        self._partner_id = partner_id
        self._config = config
        self._pool = pool
        self._refill_pool = refill_pool or pool
        self.live_calls = live_calls or LiveCalls(config.live_calls_max)
        self._clock = clock
        self._rng = rng or random.Random()
        self._sleep = sleep  # between refills (tests wake it themselves)
        self.table = PresignedTable()
        self.failing: SourceError | None = None  # the last refill failed: the backend is down
        # The last live call that failed transiently (monotonic time it failed, the error).
        self._live_failure: tuple[float, TransientSourceError] | None = None
        self._task: asyncio.Task[None] | None = None
        self._due = asyncio.Event()  # a request found no entry for now: refill without waiting
        self._retired = False
        self._log = get_logger()

    def __repr__(self) -> str:
        return f"RemoteSigning({self.signer.backend}, version={self.signer.version!r})"

    # -- lifecycle (event loop) ------------------------------------------------------------

    def start(self) -> None:
        """Fill the table now and keep it filled until ``retire()``."""
        self._task = asyncio.ensure_future(self._keep_filled())

    def retire(self) -> None:
        """This key version is no longer current: drop its table now, stop refilling."""
        self._retired = True
        self.table.clear()
        self.failing = None  # no refill will clear it now: a verify of this version goes live
        if self._task is not None:
            self._task.cancel()

    # -- the sign path (event loop, no I/O) ------------------------------------------------

    def presigned(self) -> tuple[str, str] | None:
        """(timestamp, signature) of the current whole second; None: sign it live.

        Raises ``presign_exhausted`` when the table has run out while the backend is failing.
        """
        found = self.table.get(int(self._clock()))
        if found is None and self.failing is None:
            self._due.set()  # the wall clock stepped out of the table, or it is not filled yet
        if found is None and self.failing is not None:
            raise KeyUnavailableError(
                "presign_exhausted",
                f"no presigned signature left for {self.environment!r} and the "
                f"{self.signer.backend} signer is failing ({self.failing.code}); "
                "retry when it is back",
            )
        return found

    def presigned_for_s(self) -> float:
        return self.table.left_s(self._clock())

    async def sign_live(self, timestamp: str) -> str:
        """One backend call for a timestamp the table does not hold."""
        self._refuse_if_failing("a caller's timestamp is signed live")
        message = signed_message(timestamp, self._partner_id)
        signatures = await self._call(self.signer.sign, [message])
        return signatures[0]

    async def verify(self, timestamp: str, signature: str) -> bool:
        """From the table when it holds ``timestamp``, else one backend call."""
        presigned = self.table.signature_of(timestamp)
        if presigned is not None:
            given = signature.encode("utf-8", "surrogatepass")
            return hmac.compare_digest(presigned.encode("ascii"), given)
        self._refuse_if_failing("a signature not presigned is verified live")
        message = signed_message(timestamp, self._partner_id)
        return await self._call(self.signer.verify, message, signature)

    def _refuse_if_failing(self, why: str) -> None:
        if self.failing is not None:
            raise KeyUnavailableError(
                "signer_unavailable",
                f"the {self.signer.backend} signer for {self.environment!r} is failing "
                f"({self.failing.code}) and {why}; retry when it is back",
            )

    async def _in_pool(
        self,
        pool: Executor,
        call: Callable[..., T],
        *args: object,
        done: Callable[[], None] | None = None,
    ) -> T:
        """``call(*args)`` in ``pool``; a signer's bug is a failure like any other, so that it
        can neither end the refill loop nor escape a request as a 500. ``done`` runs on the
        loop when the call has left the pool: run, failed, or cancelled while still queued
        (a caller gone mid-call leaves it running, and counted, until it returns)."""
        loop = asyncio.get_running_loop()
        future = pool.submit(call, *args)
        if done is not None:
            future.add_done_callback(lambda _: _call_soon(loop, done))
        try:
            return await asyncio.wrap_future(future)
        except SourceError:
            raise
        except Exception as exc:
            raise TransientSourceError(
                f"unexpected {type(exc).__name__} in the {self.signer.backend} signer",
                code="signer_bug",
            ) from exc

    async def _call(self, call: Callable[..., T], *args: object) -> T:
        self.live_calls.take(self.environment)
        try:
            return await self._in_pool(
                self._pool, self._live, time.monotonic(), call, *args, done=self.live_calls.release
            )
        except SourceError as exc:
            self._log.warning(
                "signer.call_failed",
                environment=self.environment,
                key_version=self.signer.version,
                code=exc.code,
                reason=exc.reason,
            )
            raise KeyUnavailableError(
                "signer_unavailable",
                f"the {self.signer.backend} signer for {self.environment!r} did not answer "
                f"({exc.code}); retry later",
            ) from None

    def _live(self, queued: float, call: Callable[..., T], *args: object) -> T:
        """In a pool thread. A call queued before a live call failed transiently (a hung or
        unreachable backend) fails with it at once: a burst then waits one timeout, not one
        per pool's worth of calls ahead of it. A call queued after the failure tries again."""
        failed = self._live_failure
        if failed is not None and failed[0] >= queued:
            raise TransientSourceError(failed[1].reason, code=failed[1].code)
        try:
            return call(*args)
        except TransientSourceError as exc:
            self._live_failure = (time.monotonic(), exc)
            raise

    # -- refills ---------------------------------------------------------------------------

    async def _keep_filled(self) -> None:
        failures = 0
        while not self._retired:
            self._due.clear()
            try:
                await self._fill()
            except SourceError as exc:
                failures += 1
                self.failing = exc
                self._log.warning(
                    "presign.refill_failed",
                    environment=self.environment,
                    key_version=self.signer.version,
                    code=exc.code,
                    reason=exc.reason,
                    presigned_s=int(self.presigned_for_s()),
                    failures=failures,
                )
                await self._sleep(REFILL_BACKOFF.delay(failures, self._rng))
                continue
            if failures:
                self._log.info("presign.recovered", environment=self.environment, failures=failures)
            failures, self.failing = 0, None
            left = self.table.end - self._clock()
            await self._nap(max(1.0, left - self._config.refill_below.total_seconds()))

    async def _nap(self, delay: float) -> None:
        """Sleep ``delay`` (the loop's clock, which a wall-clock step does not move) or until
        a request misses the table, so that a step is followed by a refill at once."""
        sleeper = asyncio.ensure_future(self._sleep(delay))
        woken = asyncio.ensure_future(self._due.wait())
        try:
            await asyncio.wait((sleeper, woken), return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            woken.cancel()

    async def _fill(self) -> None:
        """Sign every whole second from the table's end (or now) to ``lead`` ahead."""
        now = self._clock()
        if self.table.start > now:  # the clock stepped back: those seconds are far ahead
            self.table.clear()
        self.table.prune(int(now))
        first = max(self.table.end, int(now))
        until = int(now + self._config.lead.total_seconds())
        calls = 0
        while first < until:
            stamps = [whole_second(s) for s in range(first, min(first + self._config.batch, until))]
            messages = [signed_message(stamp, self._partner_id) for stamp in stamps]
            signatures = await self._in_pool(self._refill_pool, self.signer.sign, messages)
            if self._retired:
                return
            if len(signatures) != len(stamps):
                raise TransientSourceError(
                    f"{self.signer.backend} answered {len(signatures)} of {len(stamps)} HMACs",
                    code="short_batch",
                )
            self.table.extend(first, list(zip(stamps, signatures, strict=True)))
            first, calls = self.table.end, calls + 1
        if calls:
            self._log.info(
                "presign.refilled",
                environment=self.environment,
                key_version=self.signer.version,
                calls=calls,
                presigned_s=int(self.presigned_for_s()),
            )


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    """From a pool thread (or the loop's own, for a call cancelled while queued)."""
    with contextlib.suppress(RuntimeError):  # the loop has closed (shutdown): nothing to count
        loop.call_soon_threadsafe(callback)
