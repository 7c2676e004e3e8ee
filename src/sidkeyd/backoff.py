"""The codebase's one backoff: exponential, with full jitter, bounded."""

from __future__ import annotations

import random
from datetime import timedelta


def backoff_delay(failures: int, low: timedelta, high: timedelta, rng: random.Random) -> float:
    """Exponential backoff with full jitter, bounded to [low, high] seconds."""
    ceiling = min(high.total_seconds(), low.total_seconds() * 2 ** max(failures - 1, 0))
    return rng.uniform(low.total_seconds(), max(ceiling, low.total_seconds()))
