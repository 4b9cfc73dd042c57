"""Small statistics the measurements share."""

from __future__ import annotations

import math
import statistics
from typing import Sequence

__all__ = ["median", "percentile"]


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def percentile(values: Sequence[float], p: float) -> float:
    """The nearest-rank ``p``-th percentile (the smallest value with p% of the values at or below it)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]
