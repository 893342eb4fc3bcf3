"""The one source of time. Tests and simulations inject their own."""

from __future__ import annotations

import time
from typing import Protocol

__all__ = ["Clock", "SystemClock"]


class Clock(Protocol):
    """Wall-clock seconds since the epoch (what EIP-3009 validity windows use)."""

    def now(self) -> float: ...


class SystemClock:
    """The machine's wall clock."""

    __slots__ = ()

    def now(self) -> float:
        return time.time()
