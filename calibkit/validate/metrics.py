"""Streaming error metrics: every accumulator is a fixed-size sum, so memory does not grow
with the validation set. Error and latency distributions reuse the exact |x| histogram."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from calibkit.methods.percentile import PercentileConfig, percentile_amax
from calibkit.numerics.histogram import TensorHistogram

PERCENTILES = (50.0, 90.0, 99.0, 99.9)


def hist_percentile(h: TensorHistogram, p: float) -> float:
    """Upper edge of the bin holding the p-th percentile (exact to one bin width)."""
    return percentile_amax(h, PercentileConfig(p)) if h.counts.any() else 0.0


def sqnr_db(signal: float, noise: float) -> float:
    if noise <= 0:
        return math.inf
    if signal <= 0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


@dataclass
class Agreement:
    """Signal/noise sums of a reference vs a candidate tensor."""

    ref2: float = 0.0
    err2: float = 0.0
    dot: float = 0.0
    cand2: float = 0.0

    def add(self, ref: np.ndarray, cand: np.ndarray, diff: np.ndarray | None = None) -> None:
        r = ref.astype(np.float64, copy=False).ravel()
        c = cand.astype(np.float64, copy=False).ravel()
        d = (c - r) if diff is None else diff.ravel()
        self.ref2 += float(r @ r)
        self.err2 += float(d @ d)
        self.dot += float(r @ c)
        self.cand2 += float(c @ c)

    @property
    def sqnr(self) -> float:
        return sqnr_db(self.ref2, self.err2)

    @property
    def cosine(self) -> float:
        den = math.sqrt(self.ref2 * self.cand2)
        return self.dot / den if den > 0 else (1.0 if self.err2 == 0 else 0.0)


@dataclass
class OutputMetrics:
    agree: Agreement = field(default_factory=Agreement)
    abs_err: TensorHistogram = field(default_factory=TensorHistogram)
    elements: int = 0
    nonfinite: int = 0
    reference_nonfinite: int = 0  # NaN/Inf in the FP32 reference itself: no verdict can be trusted
    min_sample_cosine: float = 1.0
    samples: int = 0
    top1: int = 0
    top5: int = 0
    classes: int | None = None
    _abs_sum: float = 0.0

    def add(self, ref: np.ndarray, cand: np.ndarray) -> None:
        if ref.shape != cand.shape:
            raise ValueError(f"shape {cand.shape} != reference {ref.shape}")
        ref_finite = np.isfinite(ref)
        ref_bad = int(ref.size - ref_finite.sum())
        if ref_bad:  # counted, and left out of every sum (both sides zero there)
            self.reference_nonfinite += ref_bad
            ref = np.where(ref_finite, ref, 0).astype(ref.dtype, copy=False)
            cand = np.where(ref_finite, cand, 0).astype(cand.dtype, copy=False)
        finite = np.isfinite(cand)
        bad = int(cand.size - finite.sum())
        if bad:
            self.nonfinite += bad
            cand = np.where(finite, cand, ref)  # excluded from the error sums, counted above
        r64, c64 = ref.astype(np.float64), cand.astype(np.float64)  # one conversion for every sum
        d = c64 - r64
        self.agree.add(r64, c64, d)
        np.abs(d, out=d)
        self.abs_err.update(d)
        self._abs_sum += float(d.sum())
        self.elements += ref.size
        n = ref.shape[0] if ref.ndim else 1
        self.samples += n
        r2, c2 = r64.reshape(n, -1), c64.reshape(n, -1)
        den = np.sqrt((r2 * r2).sum(1) * (c2 * c2).sum(1))
        cos = np.where(den > 0, (r2 * c2).sum(1) / np.where(den > 0, den, 1), 1.0)
        if cos.size:
            self.min_sample_cosine = min(self.min_sample_cosine, float(cos.min()))
        if ref.ndim == 2 and ref.shape[1] >= 2:  # class scores
            self.classes = ref.shape[1]
            rt = ref.argmax(1)
            self.top1 += int((cand.argmax(1) == rt).sum())
            k = min(5, ref.shape[1])
            topk = np.argpartition(-cand, k - 1, axis=1)[:, :k]
            self.top5 += int((topk == rt[:, None]).any(1).sum())

    def summary(self) -> dict:
        e = self.abs_err
        out = {
            "max_abs_err": e.amax,
            "mean_abs_err": self._abs_sum / max(1, self.elements),
            "rel_err": math.sqrt(self.agree.err2 / self.agree.ref2) if self.agree.ref2 > 0 else 0.0,
            "cosine": self.agree.cosine,
            "min_sample_cosine": self.min_sample_cosine,
            "sqnr_db": self.agree.sqnr,
            "nonfinite": self.nonfinite,
            "reference_nonfinite": self.reference_nonfinite,
            "elements": self.elements,
        }
        for p in PERCENTILES:
            out[f"abs_err_p{p:g}"] = hist_percentile(e, p)
        if self.classes:
            out["top1_agreement"] = self.top1 / max(1, self.samples)
            out["top5_agreement"] = self.top5 / max(1, self.samples)
        return out


@dataclass
class Latency:
    """Per-batch wall times in 0.5%-wide log buckets: median/p99 within 0.5% without keeping
    every run (at most a few thousand buckets between a microsecond and an hour)."""

    buckets: dict[int, int] = field(default_factory=dict)
    total: float = 0.0
    samples: int = 0
    batches: int = 0

    STEP = math.log1p(0.005)

    def add(self, seconds: float, samples: int) -> None:
        k = math.floor(math.log(max(seconds, 1e-9)) / self.STEP)
        self.buckets[k] = self.buckets.get(k, 0) + 1
        self.total += seconds
        self.samples += samples
        self.batches += 1

    def percentile(self, p: float) -> float:
        if not self.batches:
            return 0.0
        need, seen = p / 100.0 * self.batches, 0
        for k in sorted(self.buckets):
            seen += self.buckets[k]
            if seen >= need:
                return math.exp((k + 0.5) * self.STEP)
        return 0.0

    def median_noise(self) -> float | None:
        """Standard error of the median (IQR-based), seconds; None under 3 batches."""
        if self.batches < 3:
            return None
        sigma = (self.percentile(75) - self.percentile(25)) / 1.349
        return max(1.2533 * sigma / math.sqrt(self.batches), self.percentile(50) * 0.005)  # the buckets' own width

    def summary(self) -> dict:
        noise = self.median_noise()
        return {
            "median_ms": self.percentile(50) * 1e3,
            "median_noise_ms": noise * 1e3 if noise is not None else None,
            "p99_ms": self.percentile(99) * 1e3,
            "throughput_sps": self.samples / self.total if self.total > 0 else 0.0,
            "batches": self.batches,
        }


def with_noise(value: float | None, noise: float | None) -> str:
    """``value`` to the precision its noise supports: ``12.3±0.4``; two digits when unknown."""
    if value is None or not math.isfinite(value):
        return "–"
    if noise is None or not (math.isfinite(noise) and noise > 0):
        return f"{value:.2g}"
    d = -math.floor(math.log10(noise))
    return f"{round(value, d):.{max(d, 0)}f}±{round(noise, d):.{max(d, 0)}f}"
