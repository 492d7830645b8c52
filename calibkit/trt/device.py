"""Device memory behind one small interface: allocate, copy in, copy out, free, stream.

Two implementations, chosen by what is installed and imported only when first used:
cuda-python (``cuda.bindings.runtime``, what TensorRT's own samples use) first, pycuda as
the alternative. Neither needs TensorRT; both work on the primary CUDA context that
TensorRT uses. Copies are asynchronous on the interface's stream; call ``synchronize``
before reading host data back.
"""

from __future__ import annotations

import importlib.util
from typing import Protocol

import numpy as np

from calibkit.errors import CalibkitError

INSTALL = "pip install cuda-python (or pycuda); TensorRT calibration and engines need an NVIDIA GPU with its driver"


class DeviceMemory(Protocol):
    name: str

    def allocate(self, nbytes: int) -> int: ...

    def copy_in(self, ptr: int, host: np.ndarray) -> None: ...

    def copy_out(self, host: np.ndarray, ptr: int) -> None: ...

    def free(self, ptr: int) -> None: ...

    @property
    def stream(self) -> int: ...

    def synchronize(self) -> None: ...

    def mem_info(self) -> tuple[int, int]: ...


def _contiguous(host: np.ndarray) -> np.ndarray:
    if not host.flags.c_contiguous:
        raise CalibkitError("internal: device copies need C-contiguous host arrays")
    return host


class CudaPython:
    """cuda-python's runtime API (``from cuda.bindings import runtime as cudart``)."""

    name = "cuda-python"

    def __init__(self) -> None:
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:  # cuda-python < 12.6 spells it cuda.cudart
            from cuda import cudart  # type: ignore[no-redef]
        self._rt = cudart
        self._check(cudart.cudaFree(0), "cudaFree(0) (CUDA context init)")  # binds the primary context
        self._stream = self._check(cudart.cudaStreamCreate(), "cudaStreamCreate")

    def _check(self, result, what: str):
        err, *rest = result if isinstance(result, tuple) else (result,)
        if err != self._rt.cudaError_t.cudaSuccess:
            _, msg = self._rt.cudaGetErrorString(err)
            text = msg.decode() if isinstance(msg, bytes) else str(msg)
            raise CalibkitError(f"CUDA error in {what}: {text}; check the GPU and driver (nvidia-smi)")
        if not rest:
            return None
        return rest[0] if len(rest) == 1 else tuple(rest)

    def allocate(self, nbytes: int) -> int:
        return int(self._check(self._rt.cudaMalloc(max(int(nbytes), 1)), f"cudaMalloc({nbytes})"))

    def copy_in(self, ptr: int, host: np.ndarray) -> None:
        h = _contiguous(host)
        kind = self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self._rt.cudaMemcpyAsync(ptr, h.ctypes.data, h.nbytes, kind, self._stream), "cudaMemcpyAsync H2D")

    def copy_out(self, host: np.ndarray, ptr: int) -> None:
        h = _contiguous(host)
        kind = self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self._rt.cudaMemcpyAsync(h.ctypes.data, ptr, h.nbytes, kind, self._stream), "cudaMemcpyAsync D2H")

    def free(self, ptr: int) -> None:
        self._check(self._rt.cudaFree(ptr), "cudaFree")

    @property
    def stream(self) -> int:
        return int(self._stream)

    def synchronize(self) -> None:
        self._check(self._rt.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")

    def mem_info(self) -> tuple[int, int]:
        free, total = self._check(self._rt.cudaMemGetInfo(), "cudaMemGetInfo")
        return int(free), int(total)

    def close(self) -> None:
        if self._stream is not None:
            self._check(self._rt.cudaStreamDestroy(self._stream), "cudaStreamDestroy")
            self._stream = None


class PyCuda:
    """pycuda on the device's primary context (the one TensorRT's runtime API uses)."""

    name = "pycuda"

    def __init__(self) -> None:
        import pycuda.driver as cuda

        self._cuda = cuda
        try:
            cuda.init()
            self._ctx = cuda.Device(0).retain_primary_context()
            self._ctx.push()
            self._stream = cuda.Stream()
        except cuda.Error as exc:
            raise CalibkitError(f"pycuda cannot open the GPU: {exc}; check the driver (nvidia-smi)") from None
        self._live: dict[int, object] = {}

    def allocate(self, nbytes: int) -> int:
        alloc = self._cuda.mem_alloc(max(int(nbytes), 1))
        self._live[int(alloc)] = alloc
        return int(alloc)

    def copy_in(self, ptr: int, host: np.ndarray) -> None:
        self._cuda.memcpy_htod_async(ptr, _contiguous(host), self._stream)

    def copy_out(self, host: np.ndarray, ptr: int) -> None:
        self._cuda.memcpy_dtoh_async(_contiguous(host), ptr, self._stream)

    def free(self, ptr: int) -> None:
        self._live.pop(int(ptr)).free()

    @property
    def stream(self) -> int:
        return int(self._stream.handle)

    def synchronize(self) -> None:
        self._stream.synchronize()

    def mem_info(self) -> tuple[int, int]:
        free, total = self._cuda.mem_get_info()
        return int(free), int(total)

    def close(self) -> None:
        self._ctx.pop()


def available() -> list[str]:
    """Installed device-memory implementations, preferred first (nothing is imported)."""
    found = []
    if importlib.util.find_spec("cuda") is not None and (
        importlib.util.find_spec("cuda.bindings") is not None or importlib.util.find_spec("cuda.cudart") is not None
    ):
        found.append("cuda-python")
    if importlib.util.find_spec("pycuda") is not None:
        found.append("pycuda")
    return found


def open_device(prefer: str | None = None) -> DeviceMemory:
    """The first usable implementation (or ``prefer``); CalibkitError naming what to install."""
    names = available()
    if prefer is not None:
        if prefer not in ("cuda-python", "pycuda"):
            raise CalibkitError(f"device memory {prefer!r}: choose cuda-python or pycuda")
        if prefer not in names:
            raise CalibkitError(f"{prefer} is not installed; pip install {prefer}")
        names = [prefer]
    if not names:
        raise CalibkitError(f"no CUDA device-memory library: {INSTALL}")
    errors = []
    for name in names:
        try:
            return CudaPython() if name == "cuda-python" else PyCuda()
        except ImportError as exc:
            errors.append(f"{name}: {exc}")
        except CalibkitError as exc:
            errors.append(f"{name}: {exc}")
    raise CalibkitError("cannot use the GPU: " + "; ".join(errors))
