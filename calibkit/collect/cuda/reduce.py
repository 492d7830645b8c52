"""Histogram reduction on the GPU (CuPy), for collection on the CUDA provider.

ONNX Runtime leaves the exposed activations in device memory (IO binding to CUDA), CuPy
reduces them there with the same integer arithmetic as :mod:`calibkit.numerics.histogram` (|x| times
a power of two, truncated, bincount), and only 2048 counts a tensor come back to the host at
the end. The result is bit-identical to the host reduction of the same values; per batch,
one device->host transfer carries every tensor's min and max.

CuPy is optional and imported lazily; without it the host reducer is used.
"""

from __future__ import annotations

import importlib.util
import math

import numpy as np

from calibkit.numerics.histogram import BINS_LOG2, E_MIN, NUM_BINS, TensorHistogram, fold, range_exponent


def available() -> bool:
    return importlib.util.find_spec("cupy") is not None


_SOURCE = r"""
template <typename T>
__device__ void abs_hist(const T* x, long long n, T scale, unsigned long long* counts) {
    __shared__ unsigned int h[2048];
    for (int i = threadIdx.x; i < 2048; i += blockDim.x) h[i] = 0;
    __syncthreads();
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        T v = x[i];
        T a = v < (T)0 ? -v : v;
        int b = (int)(a * scale);                       // exact product, truncation = floor
        unsigned peers = __match_any_sync(__activemask(), b);
        if ((threadIdx.x & 31) == __ffs(peers) - 1)     // one shared atomic per distinct bin
            atomicAdd(&h[b], (unsigned int)__popc(peers));
    }
    __syncthreads();
    for (int i = threadIdx.x; i < 2048; i += blockDim.x)
        if (h[i]) atomicAdd(&counts[i], (unsigned long long)h[i]);
}
extern "C" __global__ void abs_hist_f32(const float* x, long long n, float s, unsigned long long* c) { abs_hist<float>(x, n, s, c); }
extern "C" __global__ void abs_hist_f64(const double* x, long long n, double s, unsigned long long* c) { abs_hist<double>(x, n, s, c); }
"""
_MODULE = None


def _bin(flat, scale, counts) -> None:
    """Add the |x| histogram of ``flat`` to ``counts`` on the device, without host syncs.

    Per-block shared-memory counts with warp-aggregated atomics: ReLU outputs put half their
    values in bin 0, and one global atomic per value serialises on that address.
    """
    global _MODULE
    import cupy as cp

    if _MODULE is None:
        _MODULE = cp.RawModule(code=_SOURCE, options=("-std=c++14",))
    f64 = flat.dtype == cp.float64
    kernel = _MODULE.get_function("abs_hist_f64" if f64 else "abs_hist_f32")
    n = flat.size
    threads = 256
    blocks = max(1, min((n + threads - 1) // threads, 132 * 8))
    kernel((blocks,), (threads,), (flat, cp.int64(n), (cp.float64 if f64 else cp.float32)(scale), counts))


class DeviceHistograms:
    def __init__(self, names: list[str]) -> None:
        import cupy as cp

        self.cp = cp
        self.counts = {n: cp.zeros(NUM_BINS, dtype=cp.uint64) for n in names}
        self.host = {n: TensorHistogram() for n in names}  # exp/min/max/count/nan/inf

    def _fold(self, name: str, e: int) -> None:
        h = self.host[name]
        self.counts[name] = fold(self.counts[name], e - h.exp, xp=self.cp)
        h.exp = e

    def update(self, arrays: dict) -> None:
        """Reduce one batch: ``{name: cupy array}`` (float16/32/64) already on the device."""
        cp = self.cp
        names = [n for n, a in arrays.items() if a.size]
        if not names:
            return
        flats = {n: arrays[n].reshape(-1) for n in names}
        lohi = cp.stack([cp.stack([f.min().astype(cp.float64), f.max().astype(cp.float64)]) for f in flats.values()]).get()
        for (name, flat), (lo, hi) in zip(flats.items(), lohi):
            h = self.host[name]
            if flat.dtype not in (cp.float32, cp.float64):
                flat = flat.astype(cp.float32)
            if not (math.isfinite(lo) and math.isfinite(hi)):
                finite = cp.isfinite(flat)
                nan = int(cp.isnan(flat).sum())
                h.nan += nan
                h.inf += int(flat.size - int(finite.sum())) - nan
                flat = flat[finite]
                if flat.size == 0:
                    continue
                lo, hi = float(flat.min()), float(flat.max())
            h.min = min(h.min, float(lo))
            h.max = max(h.max, float(hi))
            h.count += int(flat.size)
            e = range_exponent(max(-float(lo), float(hi)))
            if e > h.exp:
                self._fold(name, e)
            scale = flat.dtype.type(math.ldexp(1.0, BINS_LOG2 - h.exp))  # exact: a power of two
            _bin(cp.ascontiguousarray(flat), scale, self.counts[name])

    def to_host(self) -> dict[str, TensorHistogram]:
        out = {}
        for name, h in self.host.items():
            h.counts = self.counts[name].get().astype(np.int64)
            if h.count == 0:
                h.exp = E_MIN
            out[name] = h
        return out
