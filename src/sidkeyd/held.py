"""Secrets held in memory: readable on purpose only, never printed, never pickled.

``HeldSecret`` holds a credential that is not an API key (a Vault token, an AppRole secret
id); ``keystore.ApiKey`` is one with a fingerprint. Both refuse ``repr``/``str`` of the value
and pickling (which would write it out of memory).
"""

from __future__ import annotations

from typing import NoReturn


class HeldSecret:
    """A secret value: ``reveal()`` reads it; reprs and pickles never carry it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"{type(self).__name__}(<redacted>)"

    __str__ = __repr__

    def __reduce__(self) -> NoReturn:
        raise TypeError(f"{type(self).__name__} cannot be pickled")
