"""Thresholds of every tensor in one batched computation on the GPU (CuPy).

entropy, mse and percentile pick a bin per tensor; the amax is then derived from the bin by
the host method's own formula, so the device only has to pick the same bin. percentile is
integer arithmetic (exactly the host's). entropy and mse evaluate every candidate of every
tensor in float64 on the device; the host's choice is the least "exact" value
(``pick_near_min``) among the candidates within 1e-6 (relative) of the least screened one,
and the device evaluates in float64 too (errors ~1e-13, far inside that band), so: where one
candidate is within the band it is the host's choice; where several are, the host's exact
function decides among them, as on the host. minmax needs no histogram.

Entropy narrows that further: with |device - exact| <= d on every candidate, the exact minimum
lies within 2d of the device's least value and no candidate outside that can reach it, so the
host's exact function runs only on the candidates within ``TIGHT`` (>= 2d; d is ~1e-12 on these
float64 sums) and none runs where a single one is left.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from calibkit.methods import auto as host_auto
from calibkit.methods import entropy as host_entropy
from calibkit.methods import minmax as host_minmax
from calibkit.methods import mse as host_mse
from calibkit.methods import percentile as host_percentile
from calibkit.methods.base import attach_cuda, edge_amax, get
from calibkit.numerics.formats import INT8
from calibkit.numerics.histogram import NUM_BINS, TensorHistogram

BAND = 1e-6  # pick_near_min's band
TIGHT = (2e-9, 2e-10)  # entropy: (relative, absolute) width of the band the exact minimum lies in

_SOURCE = r"""
#ifndef INFINITY
#define INFINITY __longlong_as_double(0x7ff0000000000000LL)
#endif
extern "C" __global__ void entropy_kl(const double* bins, const double* s, const double* nz, const double* blogb,
        const double* total, int levels, int start_bin, int n_ends, double* kl) {
    int t = blockIdx.y, k = blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= n_ends) return;
    const int W = 2049;
    const double* S = s + (long long)t * W;
    const double* Z = nz + (long long)t * W;
    double T = total[t];
    int i = start_bin + k;
    double a = 0.0, c = 0.0, n = 0.0;
    int prev = 0;
    for (int g = 1; g <= levels; g++) {
        int st = (int)(((long long)g * i + levels - 1) / levels);   // ceil(g * i / levels)
        c = S[st] - S[prev];                                         // a group's count (exact)
        n = Z[st] - Z[prev];
        double cn = c / T;
        if (cn != 0.0) a += cn * log(cn) - cn * log(n);
        prev = st;
    }
    double c_last = c, n_last = n > 1.0 ? n : 1.0;
    double q_tot = S[i], last = bins[(long long)t * 2048 + i - 1], tail = T - q_tot;
    double p_last = last + tail;
    double plogp = (blogb[(long long)t * W + i - 1] + (p_last != 0.0 ? p_last * log(p_last) : 0.0)) / T - log(T);
    double tt = tail / T;
    double tail_term = tt != 0.0 ? tt * log(c_last / (T * n_last)) : 0.0;
    double v = plogp - a - log(T / q_tot) - tail_term;
    if ((tail > 0.0 && last == 0.0) || q_tot == 0.0 || isnan(v)) v = INFINITY;
    kl[(long long)t * n_ends + k] = v;
}

extern "C" __global__ void mse_err(const double* counts, const double* width, int start_bin, double* err) {
    __shared__ double h[2048];
    int t = blockIdx.y;
    for (int j = threadIdx.x; j < 2048; j += blockDim.x) h[j] = counts[(long long)t * 2048 + j];
    __syncthreads();
    int k = blockIdx.x * blockDim.x + threadIdx.x, n = 2048 - start_bin;
    if (k >= n) return;
    double w = width[t];
    double amax = (start_bin + k + 0.5) * w;
    double step = amax / QMAX;
    double e = 0.0;
    for (int j = 0; j < 2048; j++) {
        if (h[j] == 0.0) continue;
        double c = (j + 0.5) * w;
        double q = rint(c / step);
        q = q < -QMAX ? -QMAX : (q > QMAX ? QMAX : q);
        double d = q * step - c;
        e += d * d * h[j];
    }
    err[(long long)t * n + k] = e;
}
"""
_SOURCE = f"#define QMAX {INT8.qmax!r}\n" + _SOURCE  # the INT8 grid (numerics/formats.py)
_MODULES: dict[int, Any] = {}


def available() -> bool:
    from calibkit import optional
    from calibkit.sessions import cuda_device_count

    return optional.available("cupy") and cuda_device_count() > 0


def _module(cp):
    dev = cp.cuda.Device().id
    if dev not in _MODULES:
        _MODULES[dev] = cp.RawModule(code=_SOURCE, options=("-std=c++14", "--fmad=false"))  # the host's roundings
    return _MODULES[dev]


def _near(cp, values, last: bool, tight: tuple[float, float] | None = None):
    """Per row: (index of the single candidate within BAND of the finite minimum, or -1 when
    several are, with the mask of those; -2 when no candidate is finite). ``tight``: the mask
    keeps only the candidates within that (relative, absolute) band, and a row left with one
    is decided."""
    finite = cp.isfinite(values)
    m = cp.where(finite, values, cp.inf).min(axis=1, keepdims=True)
    near = finite & (values <= m + BAND * cp.abs(m) + 1e-12)
    if tight is not None:
        near &= values <= m + tight[0] * cp.abs(m) + tight[1]
    count = near.sum(axis=1)
    idx = values.shape[1] - 1 - cp.argmax(near[:, ::-1], axis=1) if last else cp.argmax(near, axis=1)
    pick = cp.where(count == 1, idx, -1)
    pick = cp.where(finite.any(axis=1), pick, -2)
    return pick, near


KERNEL_MS: dict[str, float] = {}  # the last call's kernel time per method (benches)
STATS = {
    "rows": 0,
    "resolved": 0,
    "exact_calls": 0,
    "exact_ms": 0.0,
}  # the last call's: rows, rows decided on the host, exact evaluations, their time


def _resolve(picks: np.ndarray, near, exact, last: bool, none: int) -> list[int]:
    """Candidate index per row: the device's single pick, or the host's exact function's."""
    t0 = time.perf_counter()
    STATS.update(rows=len(picks), resolved=0, exact_calls=0, exact_ms=0.0)
    out = []
    near_host = None
    for r, k in enumerate(picks.tolist()):
        if k >= 0:
            out.append(k)
        elif k == -2:
            out.append(none)
        else:
            if near_host is None:
                near_host = near.get()
            cand = np.flatnonzero(near_host[r])
            STATS["resolved"] += 1
            STATS["exact_calls"] += len(cand)
            vals = np.array([exact(r, int(j)) for j in cand])
            hits = cand[vals == vals.min()]
            out.append(int(hits[-1] if last else hits[0]))
    STATS["exact_ms"] = (time.perf_counter() - t0) * 1e3
    return out


def kl_exact(bins: np.ndarray, i: int, levels: int) -> float:
    """``entropy._kl_exact`` without scipy.stats.entropy's call overhead: the same numpy
    operations in the same order (normalise q, normalise p, rel_entr, sum), so the same value."""
    from scipy.special import rel_entr

    p, q = host_entropy.pq(bins, i, levels)
    if q.sum() == 0 or np.any((q == 0) & (p > 0)):
        return float("inf")
    q = q / np.sum(q)
    p = p / np.sum(p)
    return float(np.sum(rel_entr(p, q)))


def entropy_bins(cp, counts, cfg, host_counts: np.ndarray) -> list[int]:
    bins = counts.astype(cp.float64)
    bins[:, 0] = bins[:, 1]
    total = bins.sum(axis=1)
    zero = cp.zeros((bins.shape[0], 1))
    s = cp.concatenate([zero, cp.cumsum(bins, axis=1)], axis=1)
    nz = cp.concatenate([zero, cp.cumsum(bins != 0, axis=1, dtype=cp.float64)], axis=1)
    blogb = cp.concatenate(
        [zero, cp.cumsum(cp.where(bins > 0, bins * cp.log(cp.maximum(bins, 1.0)), 0.0), axis=1)], axis=1
    )
    n_ends = NUM_BINS + 1 - cfg.start_bin
    kl = cp.empty((bins.shape[0], n_ends))
    empty = total == 0
    total = cp.where(empty, 1.0, total)
    threads = 128
    t0, t1 = cp.cuda.Event(), cp.cuda.Event()
    t0.record()
    _module(cp).get_function("entropy_kl")(
        ((n_ends + threads - 1) // threads, bins.shape[0]),
        (threads,),
        (bins, s, nz, blogb, total, np.int32(cfg.levels), np.int32(cfg.start_bin), np.int32(n_ends), kl),
    )
    t1.record()
    kl[empty] = cp.inf
    picks, near = _near(cp, kl, last=True, tight=TIGHT)
    t1.synchronize()
    KERNEL_MS["entropy"] = cp.cuda.get_elapsed_time(t0, t1)
    hb = host_counts.astype(np.float64)
    hb[:, 0] = hb[:, 1]
    return [
        cfg.start_bin + k if k < n_ends else NUM_BINS
        for k in _resolve(
            picks.get(), near, lambda r, j: kl_exact(hb[r], cfg.start_bin + j, cfg.levels), True, n_ends - 1
        )
    ]


def mse_bins(cp, counts, widths, cfg, host_counts: np.ndarray, host_widths: np.ndarray) -> list[int]:
    n = NUM_BINS - cfg.start_bin
    err = cp.empty((counts.shape[0], n))
    threads = 128
    t0, t1 = cp.cuda.Event(), cp.cuda.Event()
    t0.record()
    _module(cp).get_function("mse_err")(
        ((n + threads - 1) // threads, counts.shape[0]),
        (threads,),
        (counts.astype(cp.float64), widths, np.int32(cfg.start_bin), err),
    )
    t1.record()
    picks, near = _near(cp, err, last=False)
    t1.synchronize()
    KERNEL_MS["mse"] = cp.cuda.get_elapsed_time(t0, t1)
    picks = cp.where(counts.sum(axis=1) == 0, 0, picks)  # no data: the host returns amax, no search
    idx = np.arange(NUM_BINS)

    def exact(r: int, j: int) -> float:
        centers = (idx + 0.5) * host_widths[r]
        c = cfg.start_bin + j
        return float(host_mse.fq_error(host_counts[r].astype(np.float64), centers, centers[c : c + 1])[0])

    return [cfg.start_bin + k for k in _resolve(picks.get(), near, exact, False, 0)]


def percentile_bins(cp, counts, cfg) -> list[int]:
    cum = cp.cumsum(counts.astype(cp.int64), axis=1)
    total = cum[:, -1]
    x = cfg.percentile / 100.0 * total.astype(cp.float64)
    k = (cum.astype(cp.float64) < x[:, None]).sum(axis=1)
    end = cp.minimum(k, NUM_BINS - 1) + 1
    return cp.where(total == 0, NUM_BINS, end).get().tolist()


def _entropy(hists: dict[str, TensorHistogram], cfg) -> dict[str, float]:
    import cupy as cp

    host_counts = np.stack([h.counts for h in hists.values()])
    bins = entropy_bins(cp, cp.asarray(host_counts), cfg, host_counts)
    return {n: edge_amax(h, b) for (n, h), b in zip(hists.items(), bins)}


def _percentile(hists: dict[str, TensorHistogram], cfg) -> dict[str, float]:
    import cupy as cp

    bins = percentile_bins(cp, cp.asarray(np.stack([h.counts for h in hists.values()])), cfg)
    return {n: edge_amax(h, b) for (n, h), b in zip(hists.items(), bins)}


def _mse(hists: dict[str, TensorHistogram], cfg) -> dict[str, float]:
    import cupy as cp

    host_counts = np.stack([h.counts for h in hists.values()])
    widths = np.array([h.bin_width for h in hists.values()])
    bins = mse_bins(cp, cp.asarray(host_counts), cp.asarray(widths), cfg, host_counts, widths)
    return {
        n: (h.amax if int(h.counts.sum()) == 0 else min((b + 0.5) * h.bin_width, h.amax))
        for (n, h), b in zip(hists.items(), bins)
    }


def _minmax(hists: dict[str, TensorHistogram], cfg) -> dict[str, float]:
    return {n: h.amax for n, h in hists.items()}


def _auto(hists: dict[str, TensorHistogram], cfg) -> dict[str, tuple[float, dict]]:
    """Every candidate of ``auto`` batched on the GPU (each method once for all tensors), then
    the host's own choice among them (:func:`calibkit.methods.auto.choose_among`): the same
    amax and the same record as the host's ``auto``."""
    per_candidate = []
    for spec, (method, mcfg) in host_auto.candidates():
        if method.cuda is None:  # a method registered by the user: its own host function
            per_candidate.append({n: float(method.amax(h, mcfg)) for n, h in hists.items()})
        else:
            per_candidate.append(method.cuda(hists, mcfg))
    return {n: host_auto.choose_among(h, [c[n] for c in per_candidate], cfg) for n, h in hists.items()}


attach_cuda("entropy", host_entropy.entropy_amax, _entropy)
attach_cuda("percentile", host_percentile.percentile_amax, _percentile)
attach_cuda("mse", host_mse.mse_amax, _mse)
attach_cuda("minmax", host_minmax.minmax_amax, _minmax)
attach_cuda("auto", host_auto.auto_amax, _auto)


def amaxes(hists: dict[str, TensorHistogram], method: str, cfg) -> dict[str, float | tuple[float, dict]]:
    """{tensor: amax, or (amax, what scales.json records of the choice)} for every histogram,
    computed in one batch on the current GPU by the method's registered CUDA implementation
    (KeyError: it has none)."""
    fn = get(method).cuda
    if fn is None:
        raise KeyError(method)
    return fn(hists, cfg) if hists else {}
