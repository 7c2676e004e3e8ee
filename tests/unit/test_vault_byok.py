"""Wrapping a key for Transit's import: what ``wrap_key`` refuses to wrap it under."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from sidkeyd.errors import PermanentSourceError
from sidkeyd.sources.vault.byok import wrap_key

KEY = b"unit-byok-key-not-real-000000000000000"


def pem(public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey) -> str:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


@pytest.mark.parametrize(
    "wrapping_key",
    [
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        "not a key at all",
        "clé",
        pem(rsa.generate_private_key(65537, 1024).public_key()),
        pem(ec.generate_private_key(ec.SECP256R1()).public_key()),
    ],
    ids=["bad-der", "not-pem", "not-ascii", "rsa-1024", "ec"],
)
def test_a_wrapping_key_that_is_not_rsa_2048_or_more_is_refused_by_name(wrapping_key: str) -> None:
    """A named refusal (no traceback from cryptography), and the key is not wrapped under it."""
    with pytest.raises(PermanentSourceError) as refused:
        wrap_key(wrapping_key, KEY)

    assert "transit_wrapping_key" == refused.value.code


def test_a_4096_bit_rsa_wrapping_key_wraps() -> None:
    """Transit's own kind of key: RSA-OAEP of the 32-byte AES key (512 bytes) + the wrapped key."""
    wrapped = wrap_key(pem(rsa.generate_private_key(65537, 4096).public_key()), KEY)

    assert 512 + 48 == len(base64.b64decode(wrapped, validate=True))  # KWP pads 38 to 40, +8
