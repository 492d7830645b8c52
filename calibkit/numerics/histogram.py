"""Mergeable |x| histograms over power-of-two ranges (pure NumPy).

Every tensor's histogram has ``NUM_BINS`` bins over ``[0, 2**exp)``, where ``exp`` is the
smallest exponent with ``max|x| < 2**exp``. Because the range is a power of two and the bin
count is fixed, the bin of a value at range ``2**exp`` is ``floor(|x| * 2**(11-exp))``, an
exact floating-point product, and growing the range by ``2**k`` folds groups of ``2**k``
adjacent bins exactly. So a histogram built batch by batch, in any order or split into
shards merged later, is bit-for-bit the histogram of all the data at once.

The binning pass runs in a compiled kernel when numba is installed (``hist_kernel.py``); the
NumPy code here is the reference it is tested against, and the fallback.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field

import numpy as np

from calibkit.numerics import kernel as hist_kernel

NUM_BINS = 2048
BINS_LOG2 = 11
E_MIN = -40  # values below 2**(E_MIN-11) fall into bin 0 whatever the range


class _Scratch(threading.local):
    """Per-thread work buffers: big temporaries from malloc cost page faults on every call."""

    def __init__(self) -> None:
        self.floats: dict[str, np.ndarray] = {}
        self.index = np.empty(0, dtype=np.int32)

    def get(self, n: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
        key = np.dtype(dtype).str
        buf = self.floats.get(key)
        if buf is None or buf.size < n:
            buf = self.floats[key] = np.empty(max(n, 1 << 16), dtype=dtype)
        if self.index.size < n:
            self.index = np.empty(max(n, 1 << 16), dtype=np.int32)
        return buf[:n], self.index[:n]


_SCRATCH = _Scratch()


def range_exponent(amax: float) -> int:
    """Smallest ``e >= E_MIN`` with ``amax < 2**e``."""
    if not amax > 0.0:
        return E_MIN
    return max(math.frexp(float(amax))[1], E_MIN)


def fold(counts: np.ndarray, k: int, xp=np):
    """Counts of a histogram whose range grew by ``2**k`` (exact); ``xp``: numpy or cupy."""
    if k <= 0:
        return counts
    out = xp.zeros(NUM_BINS, dtype=counts.dtype)
    if k >= BINS_LOG2:
        out[0] = counts.sum()
    else:
        out[: NUM_BINS >> k] = counts.reshape(NUM_BINS >> k, 1 << k).sum(axis=1)
    return out


def bin_numpy(flat: np.ndarray, scale: float) -> np.ndarray:
    """Reference binning: counts of ``trunc(|x| * scale)`` in ``flat``'s dtype (finite values,
    all below 2048 after scaling)."""
    a, idx = _SCRATCH.get(flat.size, flat.dtype)
    np.abs(flat, out=a)
    np.multiply(a, a.dtype.type(scale), out=a)
    np.copyto(idx, a, casting="unsafe")  # truncation == floor for |x| >= 0
    return np.bincount(idx, minlength=NUM_BINS)


@dataclass
class TensorHistogram:
    """Statistics of one tensor: |x| histogram plus min/max/count and NaN/Inf counts."""

    counts: np.ndarray = field(default_factory=lambda: np.zeros(NUM_BINS, dtype=np.int64))
    exp: int = E_MIN
    min: float = math.inf
    max: float = -math.inf
    count: int = 0  # finite elements
    nan: int = 0
    inf: int = 0

    @property
    def range(self) -> float:
        return math.ldexp(1.0, self.exp)

    @property
    def bin_width(self) -> float:
        return math.ldexp(1.0, self.exp - BINS_LOG2)

    @property
    def amax(self) -> float:
        """Exact max |x| over finite values (0 when no finite value was seen)."""
        if self.count == 0:
            return 0.0
        return max(-self.min, self.max, 0.0)

    def update(self, x: np.ndarray, weight: int = 1) -> None:
        """Reduce one batch of values into the histogram; ``x`` is not kept. ``weight`` counts
        every value that many times (a tensor computed once per run for ``weight`` samples)."""
        flat = np.asarray(x).reshape(-1)
        if flat.size == 0:
            return
        if flat.dtype != np.float32 and flat.dtype != np.float64:
            flat = flat.astype(np.float32)
        lo, hi = flat.min(), flat.max()
        if not (math.isfinite(lo) and math.isfinite(hi)):
            finite = np.isfinite(flat)
            nan = int(np.isnan(flat).sum())
            self.nan += nan * weight
            self.inf += (int(flat.size - finite.sum()) - nan) * weight
            flat = flat[finite]
            if flat.size == 0:
                return
            lo, hi = flat.min(), flat.max()
        self.min = min(self.min, float(lo))
        self.max = max(self.max, float(hi))
        self.count += int(flat.size) * weight
        e = range_exponent(max(-float(lo), float(hi)))
        if e > self.exp:
            self.counts = fold(self.counts, e - self.exp)
            self.exp = e
        scale = math.ldexp(1.0, BINS_LOG2 - self.exp)
        fn = hist_kernel.kernel()
        binned = hist_kernel.bin_counts(fn, flat, scale) if fn is not None else bin_numpy(flat, scale)
        self.counts += binned if weight == 1 else binned * weight

    def merge(self, other: TensorHistogram) -> TensorHistogram:
        """In-place exact merge of ``other`` into ``self``; returns ``self``."""
        e = max(self.exp, other.exp)
        self.counts = fold(self.counts, e - self.exp) + fold(other.counts, e - other.exp)
        self.exp = e
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        self.count += other.count
        self.nan += other.nan
        self.inf += other.inf
        return self

    def clipped_fraction(self, amax: float) -> float:
        """Fraction of finite values whose |x| lies in bins at or beyond ``amax``."""
        total = int(self.counts.sum())
        if total == 0 or amax >= self.amax:
            return 0.0
        first = min(NUM_BINS, int(math.ceil(amax / self.bin_width)))
        return float(self.counts[first:].sum()) / total

    def copy(self) -> TensorHistogram:
        return TensorHistogram(self.counts.copy(), self.exp, self.min, self.max, self.count, self.nan, self.inf)
