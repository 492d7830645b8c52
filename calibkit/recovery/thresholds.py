"""Activation thresholds chosen by the error of the layers that read them.

A tensor's own MSE (``--method auto``) weighs every value alike; the Conv/Gemm/MatMul reading
it does not: it weighs each input channel by its weights. Here the error of an amax is

    sum over weighted consumers of  sum_c e_c * E[(x_c - q(x_c))^2]  /  sum_c e_c * E[x_c^2]

with ``e_c`` the energy (sum of squares) of the consumer's weights that read input channel c and
the expectations taken over every calibration value, from exact per-channel |x| histograms
collected in one streamed pass (mergeable, like calibkit's tensor histograms). It is the
consumer's output error with the quantization errors of different elements taken as
uncorrelated (loss-aware PTQ, Nahshan et al. 2019; ACIQ, Banner et al. 2019). Candidates: every
method ``auto`` weighs, from the tensor's histogram, and a geometric grid around them. A tensor
no weighted layer reads keeps the ``auto`` choice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from calibkit.methods import auto
from calibkit.numerics.formats import as_float32, int8_scale, usable_amax
from calibkit.numerics.histogram import TensorHistogram

GRID = 32  # geometric grid points between the smallest candidate / 4 and the largest
OCTAVES, PER_OCTAVE = 24, 64  # |x| bins: 64 a factor of two, over 24 factors of two below the top


class ChannelHistogram:
    """Per-channel counts of |x| in log-spaced bins: bin 0 holds |x| below top * 2^-24, bin
    ``1 + i`` the i-th of ``OCTAVES * PER_OCTAVE`` geometric steps up to ``top`` (beyond: the last).
    Log bins keep a tensor whose few outliers set ``top`` resolved where its bulk lies."""

    def __init__(self, channels: int, top: float) -> None:
        self.channels = channels
        self.top = float(top) if top > 0 else 1.0
        self.bins = 1 + OCTAVES * PER_OCTAVE
        self.counts = np.zeros((channels, self.bins), dtype=np.int64)

    def update(self, x: np.ndarray, axis: int) -> None:
        a = np.moveaxis(x, axis, 0).reshape(self.channels, -1).astype(np.float64)
        a = np.abs(np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)) / self.top
        with np.errstate(divide="ignore"):
            k = np.floor((np.log2(a) + OCTAVES) * PER_OCTAVE)
        idx = np.where(a > 0, np.clip(k, -1, self.bins - 2) + 1, 0).astype(np.int64)
        idx += (np.arange(self.channels, dtype=np.int64) * self.bins)[:, None]
        self.counts += np.bincount(idx.ravel(), minlength=self.channels * self.bins).reshape(self.channels, self.bins)

    def merge(self, other: ChannelHistogram) -> ChannelHistogram:
        out = ChannelHistogram(self.channels, self.top)
        out.counts = self.counts + other.counts
        return out

    def centers(self) -> np.ndarray:
        """Geometric centre of each bin (0 for bin 0)."""
        i = np.arange(self.bins - 1)
        c = self.top * 2.0 ** ((i + 0.5) / PER_OCTAVE - OCTAVES)
        return np.concatenate([[0.0], c])

    def errors(self, amaxes: np.ndarray) -> np.ndarray:
        """[A, C] mean squared INT8 error of each channel at each amax: a value below half a step
        rounds to 0 (error x^2), one inside the range carries uniform rounding noise (step^2 / 12),
        one beyond it is clipped ((|x| - amax)^2 on top of that)."""
        c = self.centers()[None, :]
        a = np.asarray(amaxes, dtype=np.float64)[:, None]
        s = np.array([int8_scale(v) for v in amaxes])[:, None]
        err = np.where(c < s / 2, c * c, s * s / 12.0) + np.maximum(c - a, 0.0) ** 2
        n = max(int(self.counts[0].sum()), 1)
        return err @ self.counts.T.astype(np.float64) / n

    def power(self) -> np.ndarray:
        """[C] mean of x^2 per channel."""
        n = max(int(self.counts[0].sum()), 1)
        return self.counts.astype(np.float64) @ (self.centers() ** 2) / n


@dataclass
class Choice:
    amax: float
    method: str  # the candidate it came from ("grid" for the grid)
    error: float  # relative consumer error at the chosen amax
    error_auto: float  # the same at auto's amax
    candidates: dict[str, dict[str, float]]


def channel_energy(op: str, w: np.ndarray, groups: int = 1, trans_b: bool = False) -> np.ndarray:
    """[input channels] sum of squares of the weights that read each input channel."""
    w = w.astype(np.float64) ** 2
    if op == "Conv":
        per = w.reshape(groups, w.shape[0] // groups, w.shape[1], -1).sum(axis=(1, 3))  # [G, Cin/g]
        return per.reshape(-1)
    if op == "ConvTranspose":  # [Cin, Cout/g, k...]: input channels on axis 0
        return w.reshape(w.shape[0], -1).sum(axis=1)
    if op == "Gemm":
        return w.sum(axis=0) if trans_b else w.sum(axis=1)
    return w.sum(axis=1)  # MatMul [K, N]


def consumer_error(hist: ChannelHistogram, energies: list[np.ndarray], amaxes: np.ndarray) -> np.ndarray:
    """[A] relative error, summed over the consumers whose channel energies are ``energies``."""
    errs = hist.errors(amaxes)
    power = hist.power()
    total = np.zeros(len(amaxes))
    for e in energies:
        ref = float(e @ power)
        if ref > 0:
            total += errs @ e / ref
    return total


def candidates(hist: TensorHistogram) -> dict[str, float]:
    """{spec: amax} of every method ``auto`` weighs, then the grid."""
    found = {spec: usable_amax(m.amax(hist, c)) for spec, (m, c) in auto.candidates()}
    lo, hi = min(found.values()) / 4.0, max(found.values())
    if hi > lo > 0:
        for i, a in enumerate(np.geomspace(lo, hi, GRID)):
            found.setdefault(f"grid:{i}", usable_amax(float(a)))
    return found


def choose(hist: TensorHistogram, channels: ChannelHistogram, energies: list[np.ndarray]) -> Choice:
    """The candidate with the least consumer error (ties: the earlier candidate; never worse
    than auto's amax on this criterion)."""
    auto_amax, _ = auto.choose(hist, auto.AutoConfig())
    cands = candidates(hist)
    specs = list(cands)
    amaxes = np.array([cands[s] for s in specs] + [auto_amax])
    errs = consumer_error(channels, energies, amaxes)
    k = int(np.argmin(errs[:-1]))
    table = {s: {"amax": cands[s], "error": float(e)} for s, e in zip(specs, errs)}
    if not errs[k] < errs[-1]:
        return Choice(as_float32(auto_amax), "auto", float(errs[-1]), float(errs[-1]), table)
    method = "grid" if specs[k].startswith("grid:") else specs[k]
    return Choice(as_float32(cands[specs[k]]), method, float(errs[k]), float(errs[-1]), table)
