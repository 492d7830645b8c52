"""Every tensor of a run reduced in three kernel launches (CuPy raw kernels), no host sync.

Like a multi-tensor apply: a table of (pointer, size, dtype, slot) per tensor and a table of
chunks (tensor, start, length) drive one launch over all tensors of a run.

1. ``fused_stats``: per chunk, min/max over finite values and NaN/Inf counts, merged into the
   run's per-tensor slots with atomics (doubles as order-preserving integers).
2. ``fused_range``: one block per tensor: the run's stats are added to the accumulated ones,
   the range exponent (smallest ``e >= E_MIN`` with ``max|x| < 2**e``, as ``frexp`` gives it)
   is decided there and, when it grew, the tensor's 2048 counts are folded in place; the run's
   slots are reset for the next run.
3. ``fused_hist``: per chunk, ``floor(|x| * 2**(11-e))`` in the tensor's own precision
   (float16 read as float32, as the host converts it), counted in shared memory with
   warp-aggregated atomics and added to the tensor's device counts.

The arithmetic is that of :meth:`calibkit.histogram.TensorHistogram.update` (an exact product
by a power of two, truncation), so the counts are bit-identical to the host reducer's on the
same values. Counts stay on the device until :meth:`FusedHistograms.to_host`.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np

from calibkit.histogram import BINS_LOG2, E_MIN, NUM_BINS, TensorHistogram

DTYPES = {np.dtype(np.float32): 0, np.dtype(np.float16): 1, np.dtype(np.float64): 2}
CHUNK = 1 << 16  # elements per block
THREADS = 256

_SOURCE = r"""
#include <cuda_fp16.h>
typedef unsigned long long u64;
typedef long long i64;
#define NUM_BINS 2048
#define BINS_LOG2 11
#define E_MIN (-40)

__device__ __forceinline__ u64 enc(double v) {           // order-preserving double -> u64
    u64 u = (u64)__double_as_longlong(v);
    return (u >> 63) ? ~u : (u | 0x8000000000000000ULL);
}
__device__ __forceinline__ double dec(u64 u) {
    return __longlong_as_double((i64)((u >> 63) ? (u & 0x7fffffffffffffffULL) : ~u));
}
__device__ __forceinline__ double load(const void* p, int dt, i64 i) {
    if (dt == 0) return (double)((const float*)p)[i];
    if (dt == 1) return (double)__half2float(((const __half*)p)[i]);
    return ((const double*)p)[i];
}

extern "C" __global__ void fused_stats(const u64* ptr, const int* dtype, const int* slot,
        const int* c_tensor, const i64* c_start, const int* c_len,
        u64* run_lo, u64* run_hi, u64* run_nan, u64* run_inf) {
    int c = blockIdx.x, t = c_tensor[c], dt = dtype[t];
    const void* p = (const void*)ptr[t];
    i64 start = c_start[c];
    int len = c_len[c];
    double lo = INFINITY, hi = -INFINITY;
    unsigned nan = 0, inf = 0;
    for (int i = threadIdx.x; i < len; i += blockDim.x) {
        double v = load(p, dt, start + i);
        if (isnan(v)) { nan++; continue; }
        if (isinf(v)) { inf++; continue; }
        if (v == 0.0) v = 0.0;                               // -0 counts as +0
        lo = fmin(lo, v); hi = fmax(hi, v);
    }
    for (int o = 16; o > 0; o >>= 1) {
        lo = fmin(lo, __shfl_xor_sync(0xffffffff, lo, o));
        hi = fmax(hi, __shfl_xor_sync(0xffffffff, hi, o));
        nan += __shfl_xor_sync(0xffffffff, nan, o);
        inf += __shfl_xor_sync(0xffffffff, inf, o);
    }
    __shared__ double s_lo[32], s_hi[32];
    __shared__ unsigned s_nan[32], s_inf[32];
    int w = threadIdx.x >> 5, lane = threadIdx.x & 31, nw = blockDim.x >> 5;
    if (lane == 0) { s_lo[w] = lo; s_hi[w] = hi; s_nan[w] = nan; s_inf[w] = inf; }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int k = 1; k < nw; k++) {
            lo = fmin(lo, s_lo[k]); hi = fmax(hi, s_hi[k]); nan += s_nan[k]; inf += s_inf[k];
        }
        int s = slot[t];
        if (lo <= hi) { atomicMin(&run_lo[s], enc(lo)); atomicMax(&run_hi[s], enc(hi)); }
        if (nan) atomicAdd(&run_nan[s], (u64)nan);
        if (inf) atomicAdd(&run_inf[s], (u64)inf);
    }
}

extern "C" __global__ void fused_range(const i64* size, const int* slot,
        u64* run_lo, u64* run_hi, u64* run_nan, u64* run_inf,
        u64* acc_lo, u64* acc_hi, u64* acc_count, u64* acc_nan, u64* acc_inf,
        int* exps, u64* counts) {
    __shared__ u64 old[NUM_BINS];
    __shared__ int k_sh;
    int t = blockIdx.x, s = slot[t];
    u64 nan = run_nan[s], inf = run_inf[s];
    u64 finite = (u64)size[t] - nan - inf;
    if (threadIdx.x == 0) {
        k_sh = 0;
        acc_nan[s] += nan; acc_inf[s] += inf;
        if (finite > 0) {
            double lo = dec(run_lo[s]), hi = dec(run_hi[s]);
            if (enc(lo) < acc_lo[s]) acc_lo[s] = enc(lo);
            if (enc(hi) > acc_hi[s]) acc_hi[s] = enc(hi);
            acc_count[s] += finite;
            double amax = fmax(-lo, hi);
            int e = E_MIN;
            if (amax > 0.0) { int fe; frexp(amax, &fe); e = fe > E_MIN ? fe : E_MIN; }
            if (e > exps[s]) { k_sh = e - exps[s]; exps[s] = e; }
        }
        run_lo[s] = enc(INFINITY); run_hi[s] = enc(-INFINITY); run_nan[s] = 0; run_inf[s] = 0;
    }
    __syncthreads();
    int k = k_sh;
    if (k == 0) return;
    u64* h = counts + (i64)s * NUM_BINS;
    for (int i = threadIdx.x; i < NUM_BINS; i += blockDim.x) old[i] = h[i];
    __syncthreads();
    if (k >= BINS_LOG2) {                                    // everything lands in bin 0
        for (int i = threadIdx.x; i < NUM_BINS; i += blockDim.x) h[i] = 0;
        __syncthreads();
        if (threadIdx.x == 0) { u64 a = 0; for (int j = 0; j < NUM_BINS; j++) a += old[j]; h[0] = a; }
        return;
    }
    int groups = NUM_BINS >> k, width = 1 << k;
    for (int i = threadIdx.x; i < NUM_BINS; i += blockDim.x) {
        u64 a = 0;
        if (i < groups) for (int j = 0; j < width; j++) a += old[i * width + j];
        h[i] = a;
    }
}

template <typename T>
__device__ __forceinline__ void bin_value(T a, T scale, unsigned* h) {
    int b = (int)(a * scale);                                // exact product, truncation = floor
    unsigned peers = __match_any_sync(__activemask(), b);
    if ((threadIdx.x & 31) == __ffs(peers) - 1) atomicAdd(&h[b], (unsigned)__popc(peers));
}

extern "C" __global__ void fused_hist(const u64* ptr, const int* dtype, const int* slot,
        const int* c_tensor, const i64* c_start, const int* c_len, const int* exps, u64* counts) {
    __shared__ unsigned h[NUM_BINS];
    for (int i = threadIdx.x; i < NUM_BINS; i += blockDim.x) h[i] = 0;
    __syncthreads();
    int c = blockIdx.x, t = c_tensor[c], dt = dtype[t], s = slot[t];
    i64 start = c_start[c];
    int len = c_len[c];
    int shift = BINS_LOG2 - exps[s];
    if (dt == 2) {
        const double* p = (const double*)ptr[t] + start;
        double scale = ldexp(1.0, shift);
        for (int i = threadIdx.x; i < len; i += blockDim.x) {
            double v = p[i];
            if (isfinite(v)) bin_value<double>(fabs(v), scale, h);
        }
    } else {
        float scale = ldexpf(1.0f, shift);                   // 2**51 .. 2**-117: a normal float
        if (dt == 0) {
            const float* p = (const float*)ptr[t] + start;
            for (int i = threadIdx.x; i < len; i += blockDim.x) {
                float v = p[i];
                if (isfinite(v)) bin_value<float>(fabsf(v), scale, h);
            }
        } else {
            const __half* p = (const __half*)ptr[t] + start;
            for (int i = threadIdx.x; i < len; i += blockDim.x) {
                float v = __half2float(p[i]);
                if (isfinite(v)) bin_value<float>(fabsf(v), scale, h);
            }
        }
    }
    __syncthreads();
    u64* out = counts + (i64)s * NUM_BINS;
    for (int i = threadIdx.x; i < NUM_BINS; i += blockDim.x)
        if (h[i]) atomicAdd(&out[i], (u64)h[i]);
}
"""
_MODULES: dict[int, object] = {}


def _module(cp):
    dev = cp.cuda.Device().id
    if dev not in _MODULES:
        _MODULES[dev] = cp.RawModule(code=_SOURCE, options=("-std=c++14",))
    return _MODULES[dev]


def _enc(v: float) -> int:
    u = int(np.array([v], dtype=np.float64).view(np.uint64)[0])
    return (~u) & 0xFFFFFFFFFFFFFFFF if u >> 63 else u | (1 << 63)


def _dec(u: int) -> float:
    u = int(u)
    bits = u & 0x7FFFFFFFFFFFFFFF if u >> 63 else (~u) & 0xFFFFFFFFFFFFFFFF
    return float(np.array([bits], dtype=np.uint64).view(np.float64)[0])


class Table:
    """Device arrays describing one set of tensors to reduce (pointers fixed: built once)."""

    def __init__(self, cp, tensors: list[tuple[int, int, np.dtype, int]], chunk: int = CHUNK) -> None:
        """``tensors``: (device pointer, element count, dtype, slot); empty ones are skipped."""
        tensors = [t for t in tensors if t[1] > 0]
        self.n = len(tensors)
        ptr = np.array([t[0] for t in tensors], dtype=np.uint64)
        size = np.array([t[1] for t in tensors], dtype=np.int64)
        dtype = np.array([DTYPES[np.dtype(t[2])] for t in tensors], dtype=np.int32)
        slot = np.array([t[3] for t in tensors], dtype=np.int32)
        per = -(-size // chunk)
        c_tensor = np.repeat(np.arange(self.n, dtype=np.int32), per)
        first = np.repeat(np.cumsum(per) - per, per)
        c_start = (np.arange(c_tensor.size, dtype=np.int64) - first) * chunk
        c_len = np.minimum(chunk, size[c_tensor] - c_start).astype(np.int32)
        self.chunks = int(c_tensor.size)
        self.ptr, self.size, self.dtype, self.slot = (cp.asarray(a) for a in (ptr, size, dtype, slot))
        self.c_tensor, self.c_start, self.c_len = (cp.asarray(a) for a in (c_tensor, c_start, c_len))
        self.keep: list = []  # arrays whose memory the pointers refer to (one-off tables)


class FusedHistograms:
    """Histograms of ``names`` accumulated on the current CUDA device."""

    def __init__(self, names: list[str]) -> None:
        import cupy as cp

        self.cp = cp
        self.names = list(names)
        self.slot = {n: i for i, n in enumerate(self.names)}
        t = max(1, len(self.names))
        self.counts = cp.zeros((t, NUM_BINS), dtype=cp.uint64)
        self.exps = cp.full(t, E_MIN, dtype=cp.int32)
        self.acc_lo = cp.full(t, _enc(math.inf), dtype=cp.uint64)
        self.acc_hi = cp.full(t, _enc(-math.inf), dtype=cp.uint64)
        self.acc_count, self.acc_nan, self.acc_inf = (cp.zeros(t, dtype=cp.uint64) for _ in range(3))
        self.run_lo = cp.full(t, _enc(math.inf), dtype=cp.uint64)
        self.run_hi = cp.full(t, _enc(-math.inf), dtype=cp.uint64)
        self.run_nan, self.run_inf = (cp.zeros(t, dtype=cp.uint64) for _ in range(2))
        mod = _module(cp)
        self.k_stats, self.k_range, self.k_hist = (mod.get_function(k) for k in ("fused_stats", "fused_range", "fused_hist"))

    def table(self, arrays: dict) -> Table:
        """A table over ``{name: cupy array}`` (C-contiguous float16/32/64)."""
        rows = []
        for name, a in arrays.items():
            if not a.flags.c_contiguous:
                raise ValueError(f"{name}: the fused reducer needs contiguous arrays")
            rows.append((a.data.ptr, int(a.size), a.dtype, self.slot[name]))
        tab = Table(self.cp, rows)
        tab.keep = list(arrays.values())
        return tab

    def reduce(self, tab: Table, stream=None) -> None:
        """Reduce the tensors ``tab`` points at: three launches on ``stream``, no host sync."""
        if tab.n == 0:
            return
        with stream if stream is not None else contextlib.nullcontext():
            self.k_stats((tab.chunks,), (THREADS,), (tab.ptr, tab.dtype, tab.slot, tab.c_tensor, tab.c_start, tab.c_len,
                                                     self.run_lo, self.run_hi, self.run_nan, self.run_inf))
            self.k_range((tab.n,), (THREADS,), (tab.size, tab.slot, self.run_lo, self.run_hi, self.run_nan, self.run_inf,
                                                self.acc_lo, self.acc_hi, self.acc_count, self.acc_nan, self.acc_inf,
                                                self.exps, self.counts))
            self.k_hist((tab.chunks,), (THREADS,), (tab.ptr, tab.dtype, tab.slot, tab.c_tensor, tab.c_start, tab.c_len,
                                                    self.exps, self.counts))

    def update(self, arrays: dict, stream=None) -> None:
        """One run's ``{name: cupy array}`` (a one-off table; copies non-contiguous arrays)."""
        cp = self.cp
        arrays = {k: cp.ascontiguousarray(v) for k, v in arrays.items() if v.size}
        self.reduce(self.table(arrays), stream)

    def to_host(self) -> dict[str, TensorHistogram]:
        cp = self.cp
        cp.cuda.Device().synchronize()
        counts = self.counts.get().astype(np.int64)
        exps = self.exps.get()
        lo, hi = self.acc_lo.get(), self.acc_hi.get()
        count, nan, inf = self.acc_count.get(), self.acc_nan.get(), self.acc_inf.get()
        out = {}
        for name, s in self.slot.items():
            h = TensorHistogram(counts[s].copy(), int(exps[s]), _dec(lo[s]), _dec(hi[s]), int(count[s]), int(nan[s]), int(inf[s]))
            if h.count == 0:
                h.exp = E_MIN
            out[name] = h
        return out


def host_reference(arrays: dict[str, np.ndarray]) -> dict[str, TensorHistogram]:
    """The host reducer over the same per-run arrays (tests and benches compare with it)."""
    out: dict[str, TensorHistogram] = {}
    for name, a in arrays.items():
        out.setdefault(name, TensorHistogram()).update(a)
    return out


assert BINS_LOG2 == 11 and NUM_BINS == 2048  # the kernel source hard-codes both
