"""Histogram reduction on the GPU (CuPy), for collection on the CUDA provider.

ONNX Runtime leaves the exposed activations in device memory (IO binding to CUDA), CuPy
reduces them there with the same integer arithmetic as :mod:`calibkit.histogram` (|x| times
a power of two, truncated, bincount), and only 2048 counts a tensor come back to the host at
the end. The result is bit-identical to the host reduction of the same values; per batch,
one device->host transfer carries every tensor's min and max.

CuPy is optional and imported lazily; without it the host reducer is used.
"""

from __future__ import annotations

import importlib.util
import math

import numpy as np

from calibkit.histogram import BINS_LOG2, E_MIN, NUM_BINS, TensorHistogram, range_exponent


def available() -> bool:
    return importlib.util.find_spec("cupy") is not None


class DeviceHistograms:
    def __init__(self, names: list[str]) -> None:
        import cupy as cp

        self.cp = cp
        self.counts = {n: cp.zeros(NUM_BINS, dtype=cp.int64) for n in names}
        self.host = {n: TensorHistogram() for n in names}  # exp/min/max/count/nan/inf

    def _fold(self, name: str, e: int) -> None:
        h = self.host[name]
        k = e - h.exp
        if k <= 0:
            return
        c = self.counts[name]
        out = self.cp.zeros(NUM_BINS, dtype=self.cp.int64)
        if k >= BINS_LOG2:
            out[0] = c.sum()
        else:
            out[: NUM_BINS >> k] = c.reshape(NUM_BINS >> k, 1 << k).sum(axis=1)
        self.counts[name] = out
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
            scale = flat.dtype.type(math.ldexp(1.0, BINS_LOG2 - h.exp))
            idx = (cp.abs(flat) * scale).astype(cp.int32)  # truncation == floor for |x| >= 0
            self.counts[name] += cp.bincount(idx, minlength=NUM_BINS)[:NUM_BINS]

    def to_host(self) -> dict[str, TensorHistogram]:
        out = {}
        for name, h in self.host.items():
            h.counts = self.counts[name].get().astype(np.int64)
            if h.count == 0:
                h.exp = E_MIN
            out[name] = h
        return out


def ortvalue_to_cupy(value):
    """Wrap a CUDA OrtValue as a CuPy array without copying (keeps the OrtValue alive)."""
    import cupy as cp

    dtype = {"tensor(float)": cp.float32, "tensor(float16)": cp.float16, "tensor(double)": cp.float64}.get(value.data_type())
    if dtype is None:
        return None
    shape = tuple(value.shape())
    nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    mem = cp.cuda.UnownedMemory(value.data_ptr(), nbytes, owner=value)
    return cp.ndarray(shape, dtype=dtype, memptr=cp.cuda.MemoryPointer(mem, 0))
