"""MSE threshold: the bin-centre amax minimising the histogram-weighted fake-quant error.

error(a) = sum_j count_j * (fq(c_j, a) - c_j)**2 with c_j the bin centres and
fq(x, a) = clip(rint(x / (a/127)), -127, 127) * (a/127); candidates a = c_i for
i in [start_bin, NUM_BINS); ties go to the smaller amax.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from calibkit.methods.base import grid_field, pick_near_min, register
from calibkit.numerics.formats import FP8, INT8
from calibkit.numerics.histogram import NUM_BINS, TensorHistogram


@dataclass(frozen=True)
class MSEConfig:
    start_bin: int = 128
    fp8: int = grid_field()  # 1: the error on the FP8 E4M3FN grid (mse:fp8=1)

    def __post_init__(self) -> None:
        if not 1 <= self.start_bin < NUM_BINS:
            raise ValueError(f"start_bin must be in [1, {NUM_BINS}), got {self.start_bin}")
        if self.fp8 not in (0, 1):
            raise ValueError(f"fp8 must be 0 (INT8 grid) or 1 (FP8 E4M3FN grid), got {self.fp8}")


def fq_error(counts: np.ndarray, centers: np.ndarray, amax: np.ndarray) -> np.ndarray:
    step = (amax / INT8.qmax)[..., None]
    fq = np.clip(np.rint(centers / step), -INT8.qmax, INT8.qmax) * step
    return ((fq - centers) ** 2 * counts).sum(axis=-1)


@functools.lru_cache(maxsize=4)
def _levels(start_bin: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(candidate bins i, first bin of levels 1..127 per candidate, weights 2m-1), exact integers.

    With ``r = s / w = (i + 0.5) / 127``, bin ``j`` rounds to level ``k`` from
    ``j = ceil((k - 0.5) r - 0.5) = ceil(((2k-1)(2i+1) - 254) / 508)`` on (half-way ties
    cannot occur for bin centres: (2k-1)(2i+1) is odd, 254(2j+1) even).
    """
    i = np.arange(start_bin, NUM_BINS, dtype=np.int64)
    m = np.arange(1, 128, dtype=np.int64)
    num = (2 * m - 1) * (2 * i[:, None] + 1) - 254
    edges = np.clip(-(-num // 508), 0, NUM_BINS).astype(np.intp)
    for a in (i, edges):
        a.flags.writeable = False
    return i, edges, (2 * m - 1).astype(np.float64)


def _screen(counts: np.ndarray, start_bin: int) -> np.ndarray:
    """error / bin_width**2 of every candidate ``i >= start_bin``, in O(127) per candidate.

    Level ``k`` (127: clipped) holds bins ``[e_k, e_k+1)`` and costs ``sum n_j (j - u_k)**2``,
    ``u_k = k r - 0.5``. Summed over levels by parts, with ``P0, P1`` the prefix sums of
    ``n_j, n_j j`` and ``u_127 = i``:
    ``error = sum_j n_j (j - i)**2 + r (2 sum_m P1[e_m] + sum_m P0[e_m]) - r**2 sum_m (2m-1) P0[e_m]``,
    every sum an integer (exact in float64 below 2**53), combined in extended precision.
    """
    i, edges, weights = _levels(start_bin)
    n = counts.astype(np.int64)
    j = np.arange(NUM_BINS, dtype=np.int64)
    s0, s1, s2 = int(n.sum()), int((n * j).sum()), int((n * j * j).sum())
    p0 = np.concatenate(([0], np.cumsum(n))).astype(np.float64)
    p1 = np.concatenate(([0], np.cumsum(n * j))).astype(np.float64)
    g0 = p0[edges]
    a = 2.0 * p1[edges].sum(axis=1) + g0.sum(axis=1)
    b = g0 @ weights
    ld = np.longdouble
    if s2 < (1 << 62) // NUM_BINS:  # sum n (j - i)**2 exactly in int64
        t = (s2 - 2 * i * s1 + i * i * s0).astype(ld)
    else:
        il = i.astype(ld)
        t = ld(s2) - 2 * il * ld(s1) + il * il * ld(s0)
    r = (i.astype(ld) + ld(0.5)) / ld(INT8.qmax)
    return np.asarray(t + r * a.astype(ld) - r * r * b.astype(ld), dtype=np.float64)


def select_bin(hist: TensorHistogram, cfg: MSEConfig) -> int:
    """Index ``i`` of the chosen bin centre."""
    counts = hist.counts.astype(np.float64)
    centers = (np.arange(NUM_BINS) + 0.5) * hist.bin_width
    cand = np.arange(cfg.start_bin, NUM_BINS)
    screen = _screen(hist.counts, cfg.start_bin) * hist.bin_width**2
    k = pick_near_min(screen, lambda j: float(fq_error(counts, centers, centers[cand[j] : cand[j] + 1])[0]), last=False)
    return int(cand[k])


def select_bin_fp8(hist: TensorHistogram, cfg: MSEConfig, chunk: int = 128) -> int:
    """Like :func:`select_bin` with the error on the FP8 E4M3FN grid (scale a / 448, the float32
    scale the export stores), evaluated directly on the non-empty bins; ties to the smaller."""
    nz = np.flatnonzero(hist.counts)
    n = hist.counts[nz].astype(np.float64)
    c = (nz + 0.5) * hist.bin_width
    cand = np.arange(cfg.start_bin, NUM_BINS)
    errs = np.empty(len(cand))
    for i in range(0, len(cand), chunk):
        a = ((cand[i : i + chunk] + 0.5) * hist.bin_width).astype(np.float32)
        s = (a / np.float32(FP8.qmax)).astype(np.float64)[:, None]
        errs[i : i + chunk] = ((FP8.fake_quant(c[None, :], s) - c) ** 2 * n).sum(axis=1)
    return int(cand[int(np.argmin(errs))])


@register("mse", MSEConfig, "bin centre minimising histogram-weighted quantisation MSE (mse:fp8=1: on FP8's grid)")
def mse_amax(hist: TensorHistogram, cfg: MSEConfig) -> float:
    if hist.counts.sum() == 0:
        return hist.amax
    k = select_bin_fp8(hist, cfg) if cfg.fp8 else select_bin(hist, cfg)
    return min((k + 0.5) * hist.bin_width, hist.amax)
