"""Run a serialized TensorRT engine (10.x or 11.x) on host feeds, I/O staged through the
device-memory interface; the shape of the ``.run(output_names, feed)`` that ONNX Runtime
sessions have, so validate/compare time and compare it like any other candidate."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from calibkit.errors import CalibkitError
from calibkit.trt.device import DeviceMemory, open_device
from calibkit.trt.staging import Stager

TRT_MAJORS = (10, 11)

# TensorRT DataType member name -> numpy dtype (BF16/FP8/INT4 I/O are not supported here)
NUMPY = {
    "FLOAT": np.float32,
    "HALF": np.float16,
    "INT8": np.int8,
    "INT32": np.int32,
    "INT64": np.int64,
    "BOOL": np.bool_,
    "UINT8": np.uint8,
}


class EngineRunner:
    def __init__(self, engine: str | Path, device: DeviceMemory | None = None) -> None:
        import tensorrt as trt

        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(Path(engine).read_bytes())
        if self.engine is None:
            raise CalibkitError(
                f"TensorRT cannot load engine {engine}; it was built by another TensorRT version or for another GPU"
            )
        self.context = self.engine.create_execution_context()
        self.device = device or open_device()
        self.stager = Stager(self.device)
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]

    def _dtype(self, name: str) -> np.dtype:
        dt = self.engine.get_tensor_dtype(name)
        if dt.name not in NUMPY:
            raise CalibkitError(
                f"engine tensor {name!r} has type {dt.name}; calibkit runs FP32/FP16/INT8/INT32/INT64/BOOL/UINT8 I/O"
            )
        return np.dtype(NUMPY[dt.name])

    def run(self, output_names: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        host = {}
        for name in self.inputs:
            a = np.ascontiguousarray(feed[name], dtype=self._dtype(name))
            if not self.context.set_input_shape(name, a.shape):
                raise CalibkitError(f"input {name!r} shape {a.shape} is outside the engine's optimization profile")
            host[name] = a
        for name, ptr in zip(self.inputs, self.stager.stage(host, self.inputs)):
            self.context.set_tensor_address(name, ptr)
        shapes = {}
        for name in self.outputs:
            shapes[name] = tuple(self.context.get_tensor_shape(name))
            nbytes = int(np.prod(shapes[name], dtype=np.int64)) * self._dtype(name).itemsize
            self.context.set_tensor_address(name, self.stager.pointer(f"out:{name}", nbytes))
        if not self.context.execute_async_v3(self.device.stream):
            raise CalibkitError("TensorRT failed to run the engine; see its errors above")
        self.device.synchronize()
        results = {n: self.stager.read(f"out:{n}", shapes[n], self._dtype(n)) for n in self.outputs}
        missing = [n for n in output_names if n not in results]
        if missing:
            raise CalibkitError(f"the engine has no output {missing[0]!r}; its outputs are {', '.join(self.outputs)}")
        return [results[n].astype(np.float32) if results[n].dtype == np.float16 else results[n] for n in output_names]

    def close(self) -> None:
        self.stager.close()
