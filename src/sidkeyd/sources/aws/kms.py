"""AWS KMS as a remote signer: an ``HMAC_256`` key (``GENERATE_VERIFY_MAC``) that never leaves KMS.

The cheap check is ``DescribeKey`` on ``kms_key`` (usually an alias): the ``KeyId`` behind it
is the key version. Imported material cannot be replaced in KMS, so a rotation is a new KMS key
and an alias switch, which the check sees as a new ``KeyId``. Each ``KmsSigner`` calls that one
key by id, never the alias, so that signatures never mix two keys. KMS has no batch call: a
presign refill is one ``GenerateMac`` per timestamp, at most ``KMS_CONCURRENCY`` at a time.
Calls go to the source's primary region only (a KMS key lives in one region).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from typing import Any, Final

import botocore.exceptions as bx

from sidkeyd.config import EnvironmentConfig
from sidkeyd.errors import AccessLostError, InvalidSecretError, PermanentSourceError
from sidkeyd.sources import RemoteKey, Unchanged
from sidkeyd.sources.aws.errors import translate_error
from sidkeyd.threads import DaemonThreadPool

KMS_CONCURRENCY: Final = 8  # GenerateMac calls in flight per source during a refill
_ALGORITHM: Final = "HMAC_SHA_256"
_WRONG_MAC: Final = frozenset({"KMSInvalidMacException"})


class KmsKeys:
    """The KMS calls of one AWS source, on its session (primary region)."""

    def __init__(self, client: Callable[[], Any], region: str) -> None:
        self._client = client  # botocore's KMS client, built on first use (no kms stubs here)
        self.region = region
        self._pool = DaemonThreadPool(KMS_CONCURRENCY, thread_name_prefix="sidkeyd-kms")

    def check(
        self, environment: EnvironmentConfig, held_version: str | None
    ) -> RemoteKey | Unchanged:
        """The ``KeyId`` behind ``kms_key``: ``Unchanged`` when it is the one held."""
        name = environment.kms_key or ""
        metadata = self.call(lambda c: c.describe_key(KeyId=name))["KeyMetadata"]
        key_id = str(metadata["KeyId"])
        state = metadata.get("KeyState")
        if state != "Enabled":
            raise AccessLostError(
                f"{self.region}: KMS key {key_id} behind {name!r} is {state}", code="key_disabled"
            )
        if (metadata.get("KeySpec"), metadata.get("KeyUsage")) != (
            "HMAC_256",
            "GENERATE_VERIFY_MAC",
        ):
            raise InvalidSecretError(
                f"{self.region}: KMS key {key_id} behind {name!r} is not an HMAC_256 "
                "GENERATE_VERIFY_MAC key",
                code="kms_key_type",
            )
        if held_version == key_id:
            return Unchanged(key_id, served_by=self.region)
        return RemoteKey(KmsSigner(self, key_id), served_by=self.region)

    def call(self, request: Callable[[Any], Any], *, answers: frozenset[str] = frozenset()) -> Any:
        """``request(client)``; botocore's errors translated, but for the codes in ``answers``,
        returned as the answer (e.g. ``KMSInvalidMacException`` for a wrong MAC)."""
        try:
            return request(self._client())
        except bx.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code in answers:
                return {"Error": code}
            raise translate_error(exc, self.region) from exc
        except bx.BotoCoreError as exc:
            raise translate_error(exc, self.region) from exc

    def map(self, work: Callable[[bytes], str], messages: Sequence[bytes]) -> list[str]:
        """``work`` over ``messages``, ``KMS_CONCURRENCY`` at a time, in order."""
        if len(messages) == 1:
            return [work(messages[0])]
        return list(self._pool.map(work, messages))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class KmsSigner:
    """One KMS key, by id (a ``signers.RemoteSigner``)."""

    backend = "kms"

    def __init__(self, keys: KmsKeys, key_id: str) -> None:
        self._keys = keys
        self.version = key_id

    def __repr__(self) -> str:
        return f"KmsSigner(version={self.version!r})"

    def sign(self, messages: Sequence[bytes]) -> list[str]:
        return self._keys.map(self._mac, messages)

    def _mac(self, message: bytes) -> str:
        answer = self._keys.call(
            lambda c: c.generate_mac(KeyId=self.version, Message=message, MacAlgorithm=_ALGORITHM)
        )
        mac = answer.get("Mac") if isinstance(answer, dict) else None
        if not isinstance(mac, bytes) or len(mac) != 32:  # never serve what is not an HMAC-SHA256
            raise PermanentSourceError(
                f"{self._keys.region}: GenerateMac with {self.version} answered no 32-byte Mac",
                code="kms_malformed",
            )
        return base64.b64encode(mac).decode("ascii")

    def verify(self, message: bytes, signature: str) -> bool:
        try:
            mac = base64.b64decode(signature, validate=True)
        except (binascii.Error, ValueError):
            return False
        if len(mac) != 32:
            return False  # not an HMAC-SHA256: no call needed to refuse it
        answer = self._keys.call(
            lambda c: c.verify_mac(
                KeyId=self.version, Message=message, MacAlgorithm=_ALGORITHM, Mac=mac
            ),
            answers=_WRONG_MAC,  # KMS answers a wrong MAC with an error
        )
        return answer.get("MacValid") is True
