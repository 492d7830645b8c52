"""MSE threshold: the bin-centre amax minimising the histogram-weighted fake-quant error.

error(a) = sum_j count_j * (fq(c_j, a) - c_j)**2 with c_j the bin centres and
fq(x, a) = clip(rint(x / (a/127)), -127, 127) * (a/127); candidates a = c_i for
i in [start_bin, NUM_BINS); ties go to the smaller amax.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from calibkit.histogram import NUM_BINS, TensorHistogram
from calibkit.methods.base import pick_near_min, register


@dataclass(frozen=True)
class MSEConfig:
    start_bin: int = 128

    def __post_init__(self) -> None:
        if not 1 <= self.start_bin < NUM_BINS:
            raise ValueError(f"start_bin must be in [1, {NUM_BINS}), got {self.start_bin}")


def _error(counts: np.ndarray, centers: np.ndarray, amax: np.ndarray) -> np.ndarray:
    step = (amax / 127.0)[..., None]
    fq = np.clip(np.rint(centers / step), -127, 127) * step
    return ((fq - centers) ** 2 * counts).sum(axis=-1)


def select_bin(hist: TensorHistogram, cfg: MSEConfig) -> int:
    """Index ``i`` of the chosen bin centre."""
    counts = hist.counts.astype(np.float64)
    centers = (np.arange(NUM_BINS) + 0.5) * hist.bin_width
    cand = np.arange(cfg.start_bin, NUM_BINS)
    used = counts > 0
    c, w = centers[used], counts[used]
    screen = np.concatenate([_error(w, c, centers[chunk]) for chunk in np.array_split(cand, 8)])
    k = pick_near_min(screen, lambda j: float(_error(counts, centers, centers[cand[j]:cand[j] + 1])[0]), last=False)
    return int(cand[k])


@register("mse", MSEConfig, "bin centre minimising histogram-weighted quantisation MSE")
def mse_amax(hist: TensorHistogram, cfg: MSEConfig) -> float:
    if hist.counts.sum() == 0:
        return hist.amax
    return min((select_bin(hist, cfg) + 0.5) * hist.bin_width, hist.amax)
