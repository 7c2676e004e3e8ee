"""Backend text made safe to show: scrubbed, stripped of key-like tokens, truncated."""

from __future__ import annotations

import uuid

from sidkeyd.redaction import ELIDED, REDACTED, backend_text, scrub, truncate


def test_every_known_secret_is_replaced() -> None:
    """Each non-empty secret is replaced wherever it stands; an empty one is ignored."""
    assert f"a {REDACTED} b {REDACTED}" == scrub("a k1 b k2", ["k1", "", "k2"])


def test_a_key_never_held_is_stripped_by_its_shape() -> None:
    """A UUID-shaped or long mixed token (what keys look like) is elided even when unknown."""
    unknown, hexkey = str(uuid.uuid4()), "a3f9" * 8
    text = backend_text(f"value {unknown} and {hexkey}")
    assert f"value {ELIDED} and {ELIDED}" == text


def test_words_codes_and_numbers_are_kept() -> None:
    """Error codes, long words and account ids are no key: they stay readable."""
    text = "ResourceNotFoundException for arn:aws:secretsmanager:eu-west-1:123456789012:secret:x"
    assert text == backend_text(text)


def test_backend_text_is_folded_and_truncated() -> None:
    """Whitespace runs become one space; past the limit the text is cut and marked."""
    assert "a b" == backend_text("a\n\t b")
    assert "abcde...(truncated)" == backend_text("abcdefgh", limit=5)
    assert "abcde...(truncated)" == truncate("abcdefgh", 5)


def test_a_secret_held_is_scrubbed_before_tokens_are_judged() -> None:
    """A short key (no key shape) is still removed when it is known."""
    assert f"got {REDACTED}" == backend_text("got s3cr", ["s3cr"])
