"""Percentile threshold: the smallest bin edge where the cumulative |x| count reaches p%."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from calibkit.methods.base import edge_amax, register
from calibkit.numerics.histogram import NUM_BINS, TensorHistogram


@dataclass(frozen=True)
class PercentileConfig:
    percentile: float = 99.99

    def __post_init__(self) -> None:
        if not 0.0 < self.percentile <= 100.0:
            raise ValueError(f"percentile must be in (0, 100], got {self.percentile}")


def select_bin(hist: TensorHistogram, cfg: PercentileConfig) -> int:
    cum = np.cumsum(hist.counts)
    total = int(cum[-1])
    if total == 0:
        return NUM_BINS
    k = int(np.searchsorted(cum, cfg.percentile / 100.0 * total, side="left"))
    return min(k, NUM_BINS - 1) + 1


@register("percentile", PercentileConfig, "bin edge at the given percentile of |x| (default 99.99)")
def percentile_amax(hist: TensorHistogram, cfg: PercentileConfig) -> float:
    return edge_amax(hist, select_bin(hist, cfg))
