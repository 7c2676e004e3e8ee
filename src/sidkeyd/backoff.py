"""One exponential backoff for the whole daemon (after SPIRE's ``pkg/common/backoff``).

The ceiling doubles from ``low_s`` with each consecutive failure up to ``high_s``; a delay is
drawn uniformly between ``low_s`` and that ceiling ("full jitter"), so that a fleet failing
together does not retry together. Callers with a rule of their own (the Vault renewer's "never
later than halfway to expiry") apply it to what this returns.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import timedelta
from typing import Final

# 2**64 times any sane low bound is past any sane high bound: a larger exponent adds nothing
# but a float overflow.
_MAX_DOUBLINGS: Final = 64


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff between ``low_s`` and ``high_s`` seconds."""

    low_s: float
    high_s: float

    def ceiling(self, failures: int) -> float:
        """The longest wait after ``failures`` consecutive failures: low, 2 low, 4 low... high.

        Never below ``low_s`` (nor above ``high_s`` unless ``high_s < low_s``).
        """
        doublings = min(max(failures - 1, 0), _MAX_DOUBLINGS)
        return max(self.low_s, min(self.high_s, self.low_s * 2.0**doublings))

    def delay(self, failures: int, rng: random.Random) -> float:
        """A wait drawn uniformly in ``[low_s, ceiling(failures)]`` (full jitter)."""
        return rng.uniform(self.low_s, self.ceiling(failures))


def backoff_delay(failures: int, low: timedelta, high: timedelta, rng: random.Random) -> float:
    """Exponential backoff with full jitter, bounded to [low, high] seconds."""
    return Backoff(low.total_seconds(), high.total_seconds()).delay(failures, rng)
