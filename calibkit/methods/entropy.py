"""KL-divergence threshold, as TensorRT's EntropyCalibration2 is publicly reproduced.

For each candidate end bin ``i`` (``start_bin`` .. NUM_BINS): P = bins[:i] with the count of
bins[i:] added to P[i-1]; Q = bins[:i] merged into ``levels`` groups (bin j is in group
``j*levels // i``), each group's total spread evenly over its non-zero bins; the threshold is
the right edge of the ``i`` with the least KL(P||Q), ties to the larger ``i``. bins[0] is set
to bins[1] first, damping the spike at zero. KL is +inf where Q is 0 and P is not.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from calibkit.methods.base import edge_amax, pick_near_min, register
from calibkit.numerics.histogram import NUM_BINS, TensorHistogram


@dataclass(frozen=True)
class EntropyConfig:
    levels: int = 128
    start_bin: int = 128

    def __post_init__(self) -> None:
        if not 2 <= self.levels <= NUM_BINS:
            raise ValueError(f"levels must be in [2, {NUM_BINS}], got {self.levels}")
        if not self.levels <= self.start_bin <= NUM_BINS:
            raise ValueError(
                f"start_bin must be in [levels, {NUM_BINS}], got {self.start_bin} with levels {self.levels}"
                + (
                    " (start_bin defaults to 128: raise it with levels, e.g. --start-bin too)"
                    if self.start_bin < self.levels
                    else ""
                )
            )


class _Workspace(threading.local):
    """Per-thread buffers for the (candidates x levels) screening, allocated once.

    Fresh megabyte arrays on every call cost more in page faults than the arithmetic.
    """

    def __init__(self) -> None:
        self.key: tuple[int, int] | None = None

    def get(self, levels: int, start_bin: int) -> _Workspace:
        if self.key != (levels, start_bin):
            self.key = (levels, start_bin)
            self.ends = np.arange(start_bin, NUM_BINS + 1, dtype=np.intp)
            g = np.arange(levels + 1, dtype=np.intp)
            self.starts = -((-g[None, :] * self.ends[:, None]) // levels)  # ceil(g * i / levels)
            shape = self.starts.shape
            self.gathered = np.empty(shape)
            self.gathered32 = np.empty(shape, dtype=np.float32)
            self.totals = np.empty((shape[0], levels))
            self.sizes = np.empty((shape[0], levels), dtype=np.float32)
            self.work = np.empty((shape[0], levels), dtype=np.float32)
        return self


_WS = _Workspace()


def pq(bins: np.ndarray, i: int, levels: int) -> tuple[np.ndarray, np.ndarray]:
    p = bins[:i].copy()
    p[-1] += bins[i:].sum()
    group = np.arange(i) * levels // i
    nonzero = bins[:i] != 0
    totals = np.bincount(group[nonzero], weights=bins[:i][nonzero], minlength=levels)
    sizes = np.bincount(group[nonzero], minlength=levels)
    q = np.zeros(i)
    q[nonzero] = totals[group[nonzero]] / sizes[group[nonzero]]
    return p, q


def _kl_exact(bins: np.ndarray, i: int, levels: int) -> float:
    """KL(P||Q) as scipy.stats.entropy(p, q) computes it (normalise q, normalise p, rel_entr,
    sum: the same operations in the same order, so the same value) without importing
    scipy.stats, which costs about a second at start-up."""
    from scipy.special import rel_entr

    p, q = pq(bins, i, levels)
    if q.sum() == 0 or np.any((q == 0) & (p > 0)):
        return float("inf")
    q = q / np.sum(q)
    p = p / np.sum(p)
    return float(np.sum(rel_entr(p, q)))


def _group_terms(c: np.ndarray, n: np.ndarray) -> np.ndarray:
    """sum over groups of c * log(c / n), float64, for rows of group totals/sizes."""
    from scipy.special import xlogy

    with np.errstate(divide="ignore", invalid="ignore"):
        return (xlogy(c, c) - xlogy(c, n)).sum(axis=1)


def divergences(bins: np.ndarray, cfg: EntropyConfig, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """KL(P||Q) for every candidate end bin (or the ``rows`` given): (ends, kl).

    With ``rows=None`` the per-group logarithms run in float32 (a screen, accurate to ~1e-6);
    with ``rows`` given they run in float64 for those candidates only.
    """
    from scipy.special import xlogy  # on first use, not at start-up

    ws = _WS.get(cfg.levels, cfg.start_bin)
    total = float(bins.sum())
    s = np.concatenate(([0.0], np.cumsum(bins)))
    nz = np.concatenate(([0], np.cumsum(bins != 0))).astype(np.float32)  # exact up to 2**24
    ends = ws.ends if rows is None else ws.ends[rows]
    if rows is None:
        np.take(s, ws.starts, out=ws.gathered)
        np.subtract(ws.gathered[:, 1:], ws.gathered[:, :-1], out=ws.totals)
        c_last = ws.totals[:, -1].copy()
        np.take(nz, ws.starts, out=ws.gathered32)
        np.subtract(ws.gathered32[:, 1:], ws.gathered32[:, :-1], out=ws.sizes)
        n_last = ws.sizes[:, -1].astype(np.float64)
        np.maximum(ws.sizes, 1.0, out=ws.sizes)
        w = ws.work
        np.multiply(ws.totals, 1.0 / total, out=w, casting="unsafe")
        np.divide(w, ws.sizes, out=w)
        np.maximum(w, np.float32(1e-37), out=w)
        np.log(w, out=w)
        np.multiply(w, ws.totals, out=w, casting="unsafe")
        a = w.sum(axis=1, dtype=np.float64) / total  # sum_g (c/T) log(c / (n T))
    else:
        st = ws.starts[rows]
        c = s[st[:, 1:]] - s[st[:, :-1]]
        n = (nz[st[:, 1:]] - nz[st[:, :-1]]).astype(np.float64)
        c_last, n_last = c[:, -1], n[:, -1]
        a = _group_terms(c / total, n)
    q_tot = s[ends]
    last = bins[ends - 1]
    tail = total - q_tot
    blogb = np.concatenate(([0.0], np.cumsum(xlogy(bins, bins))))
    with np.errstate(divide="ignore", invalid="ignore"):
        p_last = last + tail
        plogp = (blogb[ends - 1] + xlogy(p_last, p_last)) / total - np.log(total)
        tail_term = xlogy(tail / total, c_last / (total * np.maximum(n_last, 1)))
        kl = plogp - a - np.log(total / q_tot) - tail_term
    kl[((tail > 0) & (last == 0)) | (q_tot == 0)] = np.inf
    return ends, kl


def select_bin(hist: TensorHistogram, cfg: EntropyConfig) -> int:
    """The chosen end bin ``i`` (threshold = i * bin width)."""
    bins = hist.counts.astype(np.float64)
    bins[0] = bins[1]
    if bins.sum() == 0:
        return NUM_BINS
    ends, screen = divergences(bins, cfg)
    finite = np.isfinite(screen)
    if not finite.any():
        return NUM_BINS
    m = float(screen[finite].min())
    rows = np.flatnonzero(finite & (screen <= m + 1e-4 * abs(m) + 2e-5))
    ends, kl = divergences(bins, cfg, rows)
    k = pick_near_min(kl, lambda j: _kl_exact(bins, int(ends[j]), cfg.levels), last=True)
    return int(ends[k])


@register("entropy", EntropyConfig, "KL divergence, TensorRT EntropyCalibration2 style (default)")
def entropy_amax(hist: TensorHistogram, cfg: EntropyConfig) -> float:
    return edge_amax(hist, select_bin(hist, cfg))
