"""The clock every age and schedule is measured by; tests move a ManualClock instead of sleeping."""

from __future__ import annotations

import time

from core.protocols import Clock

__all__ = ["Clock", "ManualClock", "SystemClock"]


class SystemClock:
    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


class ManualClock:
    def __init__(self, now_ms: int) -> None:
        self._now = now_ms

    def now_ms(self) -> int:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += int(seconds * 1000)
