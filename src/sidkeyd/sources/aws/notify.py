"""The AWS source's change notifications: a daemon thread long-polling an SQS queue.

The queue is fed by EventBridge with Secrets Manager's change events; each change event naming
a secret is passed to the engine, which forces a check of the environments it concerns. The
schedule stays the safety net, so a broken queue is only logged.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Final

from sidkeyd.backoff import Backoff
from sidkeyd.log import get_logger, untrusted
from sidkeyd.redaction import backend_text
from sidkeyd.sources.aws.client import AwsClients
from sidkeyd.sources.aws.errors import as_source_error
from sidkeyd.sources.aws.events import parse_change_event

if TYPE_CHECKING:
    from mypy_boto3_sqs.type_defs import DeleteMessageBatchRequestEntryTypeDef, MessageTypeDef

NOTIFY_WAIT_S: Final = 20  # SQS long poll: ReceiveMessage's WaitTimeSeconds (at most 20)
NOTIFY_BATCH: Final = 10  # ReceiveMessage's MaxNumberOfMessages (at most 10)
NOTIFY_BACKOFF: Final = Backoff(low_s=1.0, high_s=60.0)  # after a failed ReceiveMessage
NOTIFY_JOIN_S: Final = 1.0  # stop() waits this long for the poller; it is a daemon thread


class SqsWatcher:
    """Long-polls one queue in a daemon thread, started at most once, stopped for good."""

    def __init__(self, name: str, queue_url: str, clients: AwsClients, *, wait_s: int) -> None:
        self._name = name
        self._queue_url = queue_url
        self._clients = clients
        self._wait_s = wait_s
        self._log = get_logger()
        # Guards _thread: start() and stop() from different threads start at most one poller.
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self, on_change: Callable[[str], None]) -> None:
        """Start polling unless already started or stopped.

        ``on_change(secret_id)`` is called for every change event naming a secret (once per
        secret per batch received). Every message received is deleted once handled, those that
        cannot be read too (logged). A failing queue is logged (``aws.notify_failed``) and
        polled again after a backoff.
        """
        with self._lock:
            if self._thread is not None or self._stop.is_set():
                return
            self._thread = threading.Thread(
                target=self._loop,
                args=(self._queue_url, on_change),
                name=f"sidkeyd-aws-notify-{self._name}",
                daemon=True,
            )
            self._thread.start()

    def stop(self) -> None:
        """Stop polling. A long poll in flight is not interrupted: wait a little, then leave
        the daemon thread to finish its poll and exit without acting on what it received."""
        with self._lock:
            self._stop.set()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=NOTIFY_JOIN_S)

    def _loop(self, queue_url: str, on_change: Callable[[str], None]) -> None:
        log = self._log.bind(source=self._name, queue_url=queue_url)
        log.info("aws.notify_started", wait_s=self._wait_s)
        rng = random.Random()
        failures = 0
        while not self._stop.is_set():
            try:
                received = self._clients.sqs().receive_message(
                    QueueUrl=queue_url,
                    MaxNumberOfMessages=NOTIFY_BATCH,
                    WaitTimeSeconds=self._wait_s,
                )
            except Exception as exc:  # whatever happens, the poller lives on
                if self._stop.is_set():
                    break
                failures += 1
                error = as_source_error(exc, self._clients.notify_region)
                delay = NOTIFY_BACKOFF.delay(failures, rng)
                log.warning(
                    "aws.notify_failed",
                    operation="ReceiveMessage",
                    error_kind=error.kind,
                    error_code=error.code,
                    reason=error.reason,
                    consecutive_failures=failures,
                    retry_in_s=round(delay, 3),
                )
                self._stop.wait(delay)
                continue
            if failures:
                log.info("aws.notify_recovered", after_failures=failures)
                failures = 0
            if self._stop.is_set():
                break  # left in the queue: visible again after the visibility timeout
            self._handle_batch(log, queue_url, received.get("Messages", []), on_change)
        log.info("aws.notify_stopped")

    def _handle_batch(
        self,
        log: Any,
        queue_url: str,
        messages: Iterable[MessageTypeDef],
        on_change: Callable[[str], None],
    ) -> None:
        changed: dict[str, None] = {}  # ordered, deduplicated
        receipts: list[str] = []
        for message in messages:
            message_id = message.get("MessageId")
            receipt = message.get("ReceiptHandle")
            if receipt is not None:
                receipts.append(receipt)
            try:
                event_name, secret = parse_change_event(message.get("Body", ""))
            except ValueError as exc:
                log.warning("aws.notify_unparseable", message_id=message_id, reason=str(exc))
                continue
            if secret is None:
                log.debug(
                    "aws.notify_ignored", message_id=message_id, event_name=untrusted(event_name)
                )
                continue
            log.info(
                "aws.notify_received",
                message_id=message_id,
                event_name=event_name,
                secret=untrusted(secret, 512),
            )
            changed[secret] = None
        for secret in changed:
            try:
                on_change(secret)
            except Exception as exc:  # e.g. the event loop is already closed
                log.warning(
                    "aws.notify_failed",
                    operation="on_change",
                    error_code="callback_failed",
                    reason=type(exc).__name__,
                )
        if receipts:
            self._delete(log, queue_url, receipts)

    def _delete(self, log: Any, queue_url: str, receipts: list[str]) -> None:
        entries: list[DeleteMessageBatchRequestEntryTypeDef] = [
            {"Id": str(i), "ReceiptHandle": r} for i, r in enumerate(receipts)
        ]
        try:
            answer = self._clients.sqs().delete_message_batch(QueueUrl=queue_url, Entries=entries)
        except Exception as exc:
            error = as_source_error(exc, self._clients.notify_region)
            log.warning(
                "aws.notify_failed",
                operation="DeleteMessageBatch",
                error_kind=error.kind,
                error_code=error.code,
                reason=error.reason,
            )
            return
        failures = answer.get("Failed", [])
        for failed in failures:
            log.warning(
                "aws.notify_failed",
                operation="DeleteMessageBatch",
                error_code=failed.get("Code"),
                reason=backend_text(str(failed.get("Message", ""))),
            )
        log.info(
            "aws.notify_deleted", count=len(answer.get("Successful", [])), failed=len(failures)
        )
