"""Every tensor of a run reduced in three kernel launches (CuPy raw kernels), no host sync.

Like a multi-tensor apply: a table of (pointer, size, dtype, slot) per tensor and a table of
chunks (tensor, start, length) drive one launch over all tensors of a run; the kernels
(calibkit/collect/cuda/kernels.py) read each value once in the steady state, decide every tensor's
range exponent on the device (smallest ``e >= E_MIN`` with ``max|x| < 2**e``, as ``frexp``
gives it), fold its counts there when the range grows, and bin again only the tensors whose
range grew in that run.

The arithmetic is that of :meth:`calibkit.numerics.histogram.TensorHistogram.update` (an exact product
by a power of two, truncation), so the counts are bit-identical to the host reducer's on the
same values. Counts stay on the device until :meth:`FusedHistograms.to_host`.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np

from calibkit.collect.cuda.kernels import SOURCE
from calibkit.numerics.histogram import BINS_LOG2, E_MIN, NUM_BINS, TensorHistogram

DTYPES = {np.dtype(np.float32): 0, np.dtype(np.float16): 1, np.dtype(np.float64): 2}
CHUNK = 1 << 19  # elements per block (fewer blocks: fewer global atomics flushing counts)
THREADS = 256

VARIANTS = (0, 1, 2, 3)  # the kernel's counting variants (gpu_kernels.py); all bit-identical
VARIANT = 1  # the one used unless a caller names another (bench/gpu.py times them all)

_MODULES: dict[tuple[int, int], object] = {}


def module(cp, variant: int | None = None):
    """The compiled kernels of ``variant`` on the current device (compiled once, cached)."""
    variant = VARIANT if variant is None else variant
    key = (cp.cuda.Device().id, variant)
    if key not in _MODULES:
        _MODULES[key] = cp.RawModule(code=SOURCE, options=("-std=c++14", f"-DVARIANT={variant}"))
    return _MODULES[key]


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
        cp.cuda.get_current_stream().synchronize()  # pageable copies may still be in flight; kernels run on other streams
        self.keep: list = []  # arrays whose memory the pointers refer to (one-off tables)


class FusedHistograms:
    """Histograms of ``names`` accumulated on the current CUDA device."""

    def __init__(self, names: list[str], variant: int | None = None) -> None:
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
        self.over, self.redo = cp.zeros(t, dtype=cp.int32), cp.zeros(t, dtype=cp.int32)
        self.scratch = cp.zeros((t, NUM_BINS), dtype=cp.uint64)  # one run's counts at the current range
        cp.cuda.get_current_stream().synchronize()  # the fills above, before other streams use them
        mod = module(cp, variant)
        self.k_pass, self.k_range, self.k_redo = (
            mod.get_function(k) for k in ("fused_pass", "fused_range", "fused_redo")
        )

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
            chunks = (tab.ptr, tab.dtype, tab.slot, tab.c_tensor, tab.c_start, tab.c_len, self.exps)
            self.k_pass(
                (tab.chunks,),
                (THREADS,),
                (*chunks, self.run_lo, self.run_hi, self.run_nan, self.run_inf, self.over, self.scratch),
            )
            self.k_range(
                (tab.n,),
                (THREADS,),
                (
                    tab.size,
                    tab.slot,
                    self.run_lo,
                    self.run_hi,
                    self.run_nan,
                    self.run_inf,
                    self.over,
                    self.redo,
                    self.acc_lo,
                    self.acc_hi,
                    self.acc_count,
                    self.acc_nan,
                    self.acc_inf,
                    self.exps,
                    self.counts,
                    self.scratch,
                ),
            )
            self.k_redo((tab.chunks,), (THREADS,), (*chunks, self.redo, self.counts))

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
            h = TensorHistogram(
                counts[s].copy(), int(exps[s]), _dec(lo[s]), _dec(hi[s]), int(count[s]), int(nan[s]), int(inf[s])
            )
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
