"""Exponential backoff with jitter for reconnect and retry loops (never a busy loop, never in lockstep)."""

from __future__ import annotations

import random


class Backoff:
    """Delays that double from ``initial`` up to ``maximum``, each drawn from [d/2, d] ("equal jitter").

    Half the delay is kept so a retry loop can never spin; the random half spreads many
    instances that lost the same dependency at the same moment.
    """

    def __init__(self, *, initial: float = 0.5, maximum: float = 30.0, multiplier: float = 2.0) -> None:
        if not 0 < initial <= maximum or multiplier < 1:
            raise ValueError("backoff needs 0 < initial <= maximum and multiplier >= 1")
        self._initial, self._maximum, self._multiplier = initial, maximum, multiplier
        self._attempt = 0

    def next_delay(self) -> float:
        delay = self.delay(self._attempt)
        self._attempt += 1
        return delay

    def delay(self, attempt: int) -> float:
        """The delay after failed attempt number ``attempt`` (0-based), for callers that persist the count."""
        ceiling = min(self._maximum, self._initial * self._multiplier ** min(attempt, 64))
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self._attempt = 0
