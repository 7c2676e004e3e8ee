"""The KMS signer's reading of GenerateMac answers, against a KMS client that lies."""

from __future__ import annotations

from typing import Any

import pytest

from sidkeyd.errors import PermanentSourceError
from sidkeyd.sources.aws.kms import KmsKeys, KmsSigner


class LyingKms:
    """A KMS client whose GenerateMac answers ``answer``, whatever it is asked."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer

    def generate_mac(self, **_: Any) -> Any:
        return self.answer


@pytest.mark.parametrize(
    "answer",
    [{"Mac": b"\x01" * 16}, {"Mac": b"\x01" * 33}, {}, {"Mac": "AQEB"}, None],
    ids=["short", "long", "no-mac", "text", "none"],
)
def test_a_generate_mac_answer_that_is_not_a_32_byte_mac_is_refused(answer: Any) -> None:
    """Never served as a signature, and never an exception the presign loop does not expect."""
    keys = KmsKeys(lambda: LyingKms(answer), "us-east-1")
    signer = KmsSigner(keys, "1234abcd-0000-0000-0000-000000000000")
    with pytest.raises(PermanentSourceError) as refused:
        signer.sign([b"2026-12-01T08:12:13.000Z085sid_request"])
    keys.close()

    assert "kms_malformed" == refused.value.code
