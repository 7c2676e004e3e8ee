"""Held secrets: never in a repr, never pickled."""

from __future__ import annotations

import pickle

import pytest

from sidkeyd.held import HeldSecret

VALUE = "s.vault-token-material"


def test_reveal_returns_the_value() -> None:
    """The value is there for whoever asks for it by name."""
    assert VALUE == HeldSecret(VALUE).reveal()


def test_repr_and_str_never_show_the_value() -> None:
    """Logging or formatting a held secret shows a placeholder."""
    held = HeldSecret(VALUE)
    assert ["HeldSecret(<redacted>)"] * 2 == [repr(held), str(held)]


def test_held_secret_cannot_be_pickled() -> None:
    """Pickling would write the secret out of memory; it is refused."""
    with pytest.raises(TypeError):
        pickle.dumps(HeldSecret(VALUE))
