"""Reconnect delays: exponential backoff with full jitter.

Full jitter (a uniform draw between zero and the exponential cap) is what spreads clients
that lost the same peer at the same instant, so they do not return in one synchronised
wave (the retry-storm test checks it).
"""

from __future__ import annotations

import random


def full_jitter_s(attempt: int, base_s: float, cap_s: float, rng: random.Random | None = None
                  ) -> float:
    """Delay before retry ``attempt`` (0-based): uniform in [0, min(cap, base·2^attempt)]."""
    high = min(cap_s, base_s * 2 ** attempt)
    return (rng or random).uniform(0, high)
