"""Host batches staged into device buffers the stager owns: what a calibrator's ``get_batch``
and the engine runner hand to TensorRT.

One buffer per input name, grown (free + allocate) when a batch needs more bytes, reused
otherwise; ``close`` frees everything. Needs a ``DeviceMemory`` (device.py), no TensorRT.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from calibkit.errors import CalibkitError
from calibkit.trt.device import DeviceMemory

# dtypes TensorRT's I/O accepts (bool, uint8, int8, int32, int64, float16, bfloat16 via uint16 bits, float32)
SUPPORTED = (np.bool_, np.uint8, np.int8, np.int32, np.int64, np.float16, np.float32)


class Stager:
    def __init__(self, device: DeviceMemory) -> None:
        self.device = device
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (ptr, capacity bytes)
        self.copies = 0

    def pointer(self, name: str, nbytes: int) -> int:
        ptr, cap = self._buffers.get(name, (0, 0))
        if nbytes > cap or not ptr:
            if ptr:
                self.device.free(ptr)
                del self._buffers[name]
            ptr = self.device.allocate(nbytes)
            self._buffers[name] = (ptr, max(nbytes, 1))
        return ptr

    def stage(self, feed: Mapping[str, np.ndarray], names: Iterable[str]) -> list[int]:
        """Copy each named input to its device buffer; device pointers in ``names`` order."""
        ptrs = []
        for name in names:
            if name not in feed:
                raise CalibkitError(f"TensorRT asks for input {name!r} but the data has only: {', '.join(feed)}")
            a = np.ascontiguousarray(feed[name])
            if a.dtype.type not in SUPPORTED:
                raise CalibkitError(
                    f"input {name!r} is {a.dtype}; TensorRT I/O takes {', '.join(np.dtype(t).name for t in SUPPORTED)}"
                )
            ptr = self.pointer(name, a.nbytes)
            self.device.copy_in(ptr, a)
            ptrs.append(ptr)
        self.device.synchronize()  # the host arrays may go away once get_batch returns
        self.copies += 1
        return ptrs

    def read(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """Copy a staged (or engine-written) buffer back to a new host array."""
        ptr, cap = self._buffers[name]
        out = np.empty(shape, dtype)
        if out.nbytes > cap:
            raise CalibkitError(f"internal: reading {out.nbytes} bytes from the {cap}-byte buffer of {name!r}")
        self.device.copy_out(out, ptr)
        self.device.synchronize()
        return out

    @property
    def allocated(self) -> int:
        return sum(cap for _, cap in self._buffers.values())

    def close(self) -> None:
        for ptr, _ in self._buffers.values():
            self.device.free(ptr)
        self._buffers.clear()

    def __enter__(self) -> Stager:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
