"""Exponential backoff with full jitter, for every retry loop of the worker and the relay."""
from __future__ import annotations

import random


class Backoff:
    def __init__(self, first: float = 1.0, ceiling: float = 60.0):
        self.first = first
        self.ceiling = ceiling
        self.failures = 0

    def next_delay(self, at_least: float | None = None) -> float:
        """The pause before the next attempt; `at_least` honours a server's Retry-After."""
        ceiling = min(self.ceiling, self.first * 2 ** self.failures)
        self.failures += 1
        delay = random.uniform(ceiling / 2, ceiling)
        return max(delay, at_least or 0.0)

    def reset(self) -> None:
        self.failures = 0
