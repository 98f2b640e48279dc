"""How the security tests time a refusal: hostile input must be cheap to refuse."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

FAST = 0.05
"""Seconds within which any hostile token must be refused."""


def fastest(call: Callable[[], object], runs: int = 3) -> float:
    """Seconds the quickest of up to ``runs`` calls of ``call`` took.

    A machine busy with other work can stall one call; a slow path in the code
    is slow every time, so it still shows.
    """
    best = math.inf
    for _ in range(runs):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
        if best < FAST:
            break
    return best
