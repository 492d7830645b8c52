"""Second moments of a layer's input, float and quantized side by side, accumulated over batches.

For a layer ``y = W x`` the FP32 model reads ``x`` and the INT8 model reads ``x~`` (upstream
layers quantized, the input itself fake-quantized). Everything weight rounding and bias
correction need is in five sums over the sampled rows (float64, exact to merge):

    n, sum x, sum x~, sum x~ x~^T, sum x~ x^T

because ``E||v.x~ - w.x||^2`` after removing its mean (what a corrected bias removes) is
``v^T Cov(x~) v - 2 v^T Cov(x~, x) w + w^T Cov(x) w``, and the mean shift of an output channel
is ``w.E[x] - v.E[x~]``. ``sum x x^T`` is kept too, for the relative error a report shows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Moments:
    groups: int
    k: int
    n: int = 0
    sx: np.ndarray = field(default=None)  # [G, K]
    sq: np.ndarray = field(default=None)
    qq: np.ndarray = field(default=None)  # [G, K, K]
    qx: np.ndarray = field(default=None)
    xx: np.ndarray = field(default=None)

    def __post_init__(self) -> None:
        g, k = self.groups, self.k
        if self.sx is None:
            self.sx, self.sq = np.zeros((g, k)), np.zeros((g, k))
            self.qq, self.qx, self.xx = np.zeros((g, k, k)), np.zeros((g, k, k)), np.zeros((g, k, k))

    def update(self, x: np.ndarray, xq: np.ndarray) -> None:
        """``x``, ``xq``: the same sampled rows [G, M, K] of the float and the quantized input."""
        x64, q64 = x.astype(np.float64), xq.astype(np.float64)
        self.n += x.shape[1]
        self.sx += x64.sum(1)
        self.sq += q64.sum(1)
        qt = q64.transpose(0, 2, 1)
        self.qq += qt @ q64
        self.qx += qt @ x64
        self.xx += x64.transpose(0, 2, 1) @ x64

    def merge(self, other: Moments) -> Moments:
        return Moments(
            self.groups,
            self.k,
            self.n + other.n,
            self.sx + other.sx,
            self.sq + other.sq,
            self.qq + other.qq,
            self.qx + other.qx,
            self.xx + other.xx,
        )

    @property
    def mean_x(self) -> np.ndarray:
        return self.sx / max(self.n, 1)

    @property
    def mean_q(self) -> np.ndarray:
        return self.sq / max(self.n, 1)

    def cov_qq(self) -> np.ndarray:
        m = self.mean_q
        return self.qq / max(self.n, 1) - m[:, :, None] * m[:, None, :]

    def cov_qx(self) -> np.ndarray:
        return self.qx / max(self.n, 1) - self.mean_q[:, :, None] * self.mean_x[:, None, :]

    def cov_xx(self) -> np.ndarray:
        m = self.mean_x
        return self.xx / max(self.n, 1) - m[:, :, None] * m[:, None, :]


def _quad(a: np.ndarray, m: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per row, ``a_r^T M b_r`` for ``a``, ``b`` [G, R, K] and ``M`` [G, K, K] (BLAS, not einsum)."""
    return (np.matmul(a, m) * b).sum(axis=-1)


def output_error(m: Moments, w: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Per output row, ``E[(v.x~ - w.x - mean)^2]``: the error left once the bias is corrected.
    ``w``, ``v``: [G, R, K]."""
    err = _quad(v, m.cov_qq(), v) - 2 * _quad(v, m.cov_qx(), w) + _quad(w, m.cov_xx(), w)
    return np.maximum(err, 0.0)


def output_variance(m: Moments, w: np.ndarray) -> np.ndarray:
    """Per output row, ``Var[w.x]``: what an error is measured against."""
    return np.maximum(_quad(w, m.cov_xx(), w), 0.0)


def mean_shift(m: Moments, w: np.ndarray, v: np.ndarray, terms: str = "full") -> np.ndarray:
    """Per output row, what to add to the bias [G, R]: ``E[w.x] - E[v.x~]`` (``full``), or the
    part weight rounding causes, ``(w - v).E[x~]`` (``weights``)."""
    if terms == "weights":
        return np.einsum("grk,gk->gr", w - v, m.mean_q)
    return np.einsum("grk,gk->gr", w, m.mean_x) - np.einsum("grk,gk->gr", v, m.mean_q)
