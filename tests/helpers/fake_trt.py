"""A fake ``tensorrt`` module for testing calibkit's build code without TensorRT.

It follows the exact signatures of the version it fakes: every class, method, property and enum
member it offers must be in that version's table (tests/unit/trt/trt_signatures.json, read from
the real bindings), every call is checked against the table's overloads (wrong arity or keyword
raises TypeError as pybind11 does), a property assignment needs a writable property, and the
builder calls an attached calibrator the way pyInt8.cpp's trampolines do, with the parameters the
table lists (``read_histogram_cache(length)``, ``write_histogram_cache(ptr, length)``, ...),
catching and logging exceptions as TensorRT 10.16's bridge does ("Exception caught in ...").

Behaviour is a script, not TensorRT: parsing makes one layer per ONNX node (two for a Gemm:
``<node>`` and ``<node>_bias``) with ``[ONNX Layer: <node>]`` metadata; the build "runs" a layer
in INT8 when the INT8 flag is on and its input has a scale (calibrator cache or dynamic range),
else FP16 with the FP16 flag, else FP32, and obeys precision constraints (OBEY fails the build
when a non-float output is forced to a float type); the engine inspector reports that in
trtexec's --exportLayerInfo JSON layout. ``World`` holds the knobs and what happened.
"""

from __future__ import annotations

import json
import sys
import types
from dataclasses import dataclass, field

import numpy as np
import onnx
import trt_api

ONNX_TO_TRT = {1: "FLOAT", 10: "HALF", 3: "INT8", 6: "INT32", 7: "INT64", 9: "BOOL", 2: "UINT8"}
FORMAT = {
    "FLOAT": "Row major linear FP32",
    "HALF": "Row major linear FP16 format",
    "INT8": "Row major linear Int8 format",
    "INT32": "Row major linear Int32",
    "INT64": "Row major linear Int64",
    "BOOL": "Row major linear Bool",
}


@dataclass
class World:
    reject_cache: bool = False  # TensorRT ignores the cache the calibrator hands it
    fail_build: bool = False  # build_serialized_network returns None whatever happens
    timing_cache_ok: bool = True  # set_timing_cache's result
    fold: set = field(default_factory=set)  # ONNX nodes the parser folds away (no layer)
    calls: list[str] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    batches: int = 0
    built: list[dict] = field(default_factory=list)  # layers of the last build (name, metadata, precision)


def make(major: int, world: World | None = None) -> types.ModuleType:
    api = trt_api.load()[major]
    world = world or World()
    mod = types.ModuleType("tensorrt")
    mod.__version__ = api.version
    mod.world = world

    class Enum:
        def __init__(self, cls: str, name: str) -> None:
            self.cls, self.name = cls, name

        def __repr__(self) -> str:
            return f"{self.cls}.{self.name}"

        def __eq__(self, other) -> bool:
            return isinstance(other, Enum) and (self.cls, self.name) == (other.cls, other.name)

        def __hash__(self) -> int:
            return hash((self.cls, self.name))

    def enum(cls: str, extra: dict | None = None) -> type:
        members = {m: Enum(cls, m) for m in api.classes[cls]["members"]}
        return type(cls, (), {**members, **(extra or {})})

    class Fake:
        _cls = ""

        def __setattr__(self, name: str, value) -> None:
            if not name.startswith("_"):
                p = api.prop(self._cls, name)
                if p is None or not p["writable"]:
                    raise AttributeError(
                        f"TensorRT {api.version}: {self._cls}.{name} is {'read-only' if p else 'not a property'}"
                    )
            object.__setattr__(self, name, value)

        def _ro(self, name: str, value) -> None:
            assert api.prop(self._cls, name) is not None, f"fake sets {self._cls}.{name}, not in TensorRT {api.version}"
            object.__setattr__(self, name, value)

    def checked(cls_name: str):
        def deco(klass):
            assert cls_name in api.classes, f"fake class {cls_name} is not in TensorRT {api.version}"
            for name, fn in list(vars(klass).items()):
                if name.startswith("_") and name != "__init__" or not callable(fn):
                    continue
                if name == "__init__" and api.methods(cls_name, name) is None:
                    continue  # made by the fake itself (TensorRT offers no Python constructor)
                sigs = api.methods(cls_name, name)
                assert sigs is not None, f"fake {cls_name}.{name} is not in TensorRT {api.version}"

                def wrap(fn=fn, sigs=sigs, name=name):
                    def method(self, *args, **kw):
                        problem = trt_api.call_problem(sigs, len(args), list(kw), False)
                        if problem:
                            raise TypeError(f"{cls_name}.{name}(): incompatible function arguments: {problem}")
                        world.calls.append(f"{cls_name}.{name}")
                        return fn(self, *args, **kw)

                    return method

                setattr(klass, name, wrap())
            klass._cls = cls_name
            return klass

        return deco

    DataType = enum("DataType")
    mod.DataType = DataType
    for cls in (
        "BuilderFlag",
        "MemoryPoolType",
        "ProfilingVerbosity",
        "LayerInformationFormat",
        "TensorIOMode",
        "NetworkDefinitionCreationFlag",
    ):
        setattr(mod, cls, enum(cls))

    @checked("Logger")
    class Logger(Fake):
        def __init__(self, min_severity=None) -> None:
            pass

    for sev in ("WARNING", "ERROR", "INFO", "VERBOSE", "INTERNAL_ERROR"):
        setattr(Logger, sev, Enum("Severity", sev))
    mod.Logger = Logger

    @checked("ITensor")
    class ITensor(Fake):
        def __init__(self, name, dtype, shape=()) -> None:  # not a TensorRT constructor: made by the parser
            self._ro("name", name)
            self._ro("dtype", dtype)
            self._ro("shape", shape)
            self._range = None
            self._dq = False  # made by a DequantizeLinear (strongly typed INT8)

        if "set_dynamic_range" in api.classes["ITensor"]["methods"]:

            def set_dynamic_range(self, min, max):  # noqa: A002 - TensorRT's parameter names
                self._range = (float(min), float(max))
                return True

    @checked("ILayer")
    class ILayer(Fake):
        def _setup(self, name, node, inputs, outputs) -> None:
            self._set_types: dict[int, object] = {}
            self._inputs, self._outputs = inputs, outputs
            self.name = name
            self.metadata = f"[ONNX Layer: {node}]"
            self._ro("num_outputs", len(outputs))
            self._ro("num_inputs", len(inputs))
            if api.prop("ILayer", "precision"):
                object.__setattr__(self, "precision", DataType.FLOAT)
                self._ro("precision_is_set", False)

        def __setattr__(self, name, value) -> None:
            super().__setattr__(name, value)
            if name == "precision":
                object.__setattr__(self, "precision_is_set", True)

        def get_output(self, index):
            return self._outputs[index]

        def get_input(self, index):
            return self._inputs[index]

        if "set_output_type" in api.classes["ILayer"]["methods"]:

            def set_output_type(self, index, dtype):
                self._set_types[index] = dtype

    @checked("INetworkDefinition")
    class INetworkDefinition(Fake):
        def _setup(self) -> None:
            self._layers: list = []
            self._inputs: list = []
            self._ro("num_layers", 0)
            self._ro("num_inputs", 0)

        def get_layer(self, index):
            return self._layers[index]

        def get_input(self, index):
            return self._inputs[index]

    @checked("ParserError")
    class ParserError(Fake):
        def desc(self):
            return "fake parse error"

    @checked("OnnxParser")
    class OnnxParser(Fake):
        def __init__(self, network, logger) -> None:
            self._network = network
            self._ro("num_errors", 0)

        def get_error(self, index):
            return ParserError()

        def parse_from_file(self, model):
            m = onnx.shape_inference.infer_shapes(onnx.load(model))
            g, net = m.graph, self._network
            types_ = {v.name: v.type.tensor_type.elem_type for v in [*g.input, *g.value_info, *g.output]}
            types_.update({i.name: i.data_type for i in g.initializer})
            tensors = {}

            def tensor(name):
                if name not in tensors:
                    tensors[name] = ITensor(name, getattr(DataType, ONNX_TO_TRT.get(types_.get(name, 1), "FLOAT")))
                return tensors[name]

            for i in g.input:
                dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in i.type.tensor_type.shape.dim)
                t = ITensor(i.name, getattr(DataType, ONNX_TO_TRT.get(i.type.tensor_type.elem_type, "FLOAT")), dims)
                tensors[i.name] = t
                net._inputs.append(t)
            inits = {i.name for i in g.initializer}
            for n in g.node:
                if n.name in world.fold:
                    continue
                ins = [tensor(x) for x in n.input if x and x not in inits]
                outs = [tensor(x) for x in n.output]
                for t in outs:
                    t._dq = n.op_type == "DequantizeLinear"
                parts = [n.name, f"{n.name}_bias"] if n.op_type == "Gemm" else [n.name]
                for k, part in enumerate(parts):
                    layer = ILayer()
                    mid = ITensor(f"{part}_out", DataType.FLOAT) if k < len(parts) - 1 else None
                    layer._setup(part, n.name, ins if k == 0 else [net._layers[-1]._outputs[0]], [mid] if mid else outs)
                    net._layers.append(layer)
            net._ro("num_layers", len(net._layers))
            net._ro("num_inputs", len(net._inputs))
            return True

    @checked("IOptimizationProfile")
    class IOptimizationProfile(Fake):
        def set_shape(self, input, min, opt, max):  # noqa: A002
            world.calls.append(f"profile {input} {tuple(min)}/{tuple(opt)}/{tuple(max)}")

    @checked("ITimingCache")
    class ITimingCache(Fake):
        def serialize(self):
            return b"fake timing cache"

    @checked("IBuilderConfig")
    class IBuilderConfig(Fake):
        def _setup(self) -> None:
            self._flags: set = set()
            self._cache = None
            if api.prop("IBuilderConfig", "int8_calibrator"):
                object.__setattr__(self, "int8_calibrator", None)
            object.__setattr__(self, "profiling_verbosity", mod.ProfilingVerbosity.LAYER_NAMES_ONLY)

        def set_flag(self, flag):
            self._flags.add(flag)

        def get_flag(self, flag):
            return flag in self._flags

        def set_memory_pool_limit(self, pool, pool_size):
            pass

        def add_optimization_profile(self, profile):
            return 0

        if "set_calibration_profile" in api.classes["IBuilderConfig"]["methods"]:

            def set_calibration_profile(self, profile):
                return True

        def create_timing_cache(self, serialized_timing_cache):
            return ITimingCache()

        def set_timing_cache(self, cache, ignore_mismatch):
            self._cache = cache
            return world.timing_cache_ok

        def get_timing_cache(self):
            return self._cache

    def _calibrate(calib, network) -> bool:
        """Call the calibrator as pyInt8.cpp does; False when calibration got no data."""
        base = next(
            b.__name__ for b in type(calib).__mro__ if b.__name__.startswith("IInt8") and b.__module__ == __name__
        )
        params = api.overridable(base)
        names = [t.name for t in network._inputs]
        args = {
            "names": names,
            "length": 0,
            "ptr": object(),
            "cache": memoryview(b"TRT-101601-EntropyCalibration2\nx: 3c010a14\n"),
        }

        def call(method, default=None):
            try:
                return getattr(calib, method)(*[args[p] for p in params[method]])
            except Exception as exc:  # TensorRT 10.16's bridge logs and goes on
                world.log.append(f"[ERROR] Exception caught in {method}(): {exc}")
                return default

        call("get_batch_size", 0)
        if base == "IInt8LegacyCalibrator":
            call("get_quantile", -1.0)
            call("get_regression_cutoff", -1.0)
            call("read_histogram_cache")
        cache = call("read_calibration_cache")
        if cache is not None and not world.reject_cache:
            return True
        served = 0
        while True:
            ptrs = call("get_batch")
            if not ptrs:
                break
            served += 1
            world.batches += 1
        if not served:
            world.log.append("[ERROR] Calibration failure occurred with no scaling factors detected")
            return False
        if base == "IInt8LegacyCalibrator":
            call("write_histogram_cache")
        call("write_calibration_cache")
        return True

    @checked("Builder")
    class Builder(Fake):
        def __init__(self, logger) -> None:
            pass

        def create_network(self, flags=0):
            n = INetworkDefinition()
            n._setup()
            return n

        def create_builder_config(self):
            c = IBuilderConfig()
            c._setup()
            return c

        def create_optimization_profile(self):
            return IOptimizationProfile()

        def build_serialized_network(self, network, config):
            flags = config._flags
            calib = getattr(config, "int8_calibrator", None)
            int8 = "INT8" in {f.name for f in flags}
            if calib is not None and int8 and not _calibrate(calib, network):
                return None
            obey = "OBEY_PRECISION_CONSTRAINTS" in {f.name for f in flags}
            fp16 = "FP16" in {f.name for f in flags}
            layers = []
            for layer in network._layers:
                for k, dtype in layer._set_types.items():
                    out = layer._outputs[k]
                    if obey and out.dtype.name not in ("FLOAT", "HALF") and dtype.name in ("FLOAT", "HALF"):
                        world.log.append(
                            f"[ERROR] {layer.name}: output {k} is {out.dtype.name}, cannot be {dtype.name}"
                        )
                        return None
                has_scale = calib is not None or any(t._range is not None for t in layer._inputs)
                if "INT8" not in api.classes["BuilderFlag"]["members"]:  # strongly typed: the model's types decide
                    prec = (
                        "INT8"
                        if any(t._dq for t in layer._inputs)
                        else "HALF"
                        if any(t.dtype.name == "HALF" for t in layer._inputs)
                        else "FLOAT"
                    )
                elif getattr(layer, "precision_is_set", False) and obey:
                    prec = layer.precision.name
                elif int8 and has_scale:
                    prec = "INT8"
                elif fp16:
                    prec = "HALF"
                else:
                    prec = "FLOAT"
                layers.append(
                    {
                        "name": layer.name,
                        "metadata": layer.metadata,
                        "precision": prec,
                        "inputs": [t.name for t in layer._inputs],
                        "outputs": [t.name for t in layer._outputs],
                    }
                )
            if world.fail_build:
                return None
            world.built = layers
            verbosity = config.profiling_verbosity.name
            return json.dumps(
                {"layers": layers, "verbosity": verbosity, "inputs": [t.name for t in network._inputs]}
            ).encode()

    @checked("EngineInspector")
    class EngineInspector(Fake):
        def _setup(self, plan) -> None:
            self._plan = plan

        def get_engine_information(self, format):  # noqa: A002
            p = self._plan
            if p["verbosity"] != "DETAILED":
                return json.dumps({"Layers": [layer["name"] for layer in p["layers"]], "Bindings": p["inputs"]})
            rows = [
                {
                    "Name": layer["name"],
                    "LayerType": "CaskConvolution",
                    "Metadata": layer["metadata"],
                    "Inputs": [
                        {
                            "Name": i,
                            "Location": "Device",
                            "Dimensions": [1],
                            "Format/Datatype": FORMAT[layer["precision"]],
                        }
                        for i in layer["inputs"]
                    ],
                    "Outputs": [
                        {
                            "Name": o,
                            "Location": "Device",
                            "Dimensions": [1],
                            "Format/Datatype": FORMAT[layer["precision"]],
                        }
                        for o in layer["outputs"]
                    ],
                    "TacticValue": "0x0",
                }
                for layer in p["layers"]
            ]
            return json.dumps({"Layers": rows, "Bindings": p["inputs"]})

    @checked("ICudaEngine")
    class ICudaEngine(Fake):
        def _setup(self, plan) -> None:
            self._plan = plan

        def create_engine_inspector(self):
            i = EngineInspector()
            i._setup(self._plan)
            return i

    @checked("Runtime")
    class Runtime(Fake):
        def __init__(self, logger) -> None:
            pass

        def deserialize_cuda_engine(self, serialized_engine):
            e = ICudaEngine()
            e._setup(json.loads(bytes(serialized_engine)))
            return e

    for klass in (Builder, OnnxParser, Runtime, ParserError):
        setattr(mod, klass.__name__, klass)
    if "IInt8Calibrator" in api.classes:

        class IInt8Calibrator:
            def __init__(self) -> None:
                pass

        mod.IInt8Calibrator = IInt8Calibrator
        for cls in (
            "IInt8EntropyCalibrator2",
            "IInt8EntropyCalibrator",
            "IInt8MinMaxCalibrator",
            "IInt8LegacyCalibrator",
        ):
            setattr(mod, cls, type(cls, (IInt8Calibrator,), {"__module__": __name__}))
    return mod


class HostMemory:
    """calibkit.trt.device.DeviceMemory on host numpy buffers (for the calibrator's staging)."""

    name = "host"

    def __init__(self) -> None:
        self._bufs: dict[int, np.ndarray] = {}
        self._next = 4096

    def allocate(self, nbytes: int) -> int:
        ptr, self._next = self._next, self._next + max(int(nbytes), 1) + 4096
        self._bufs[ptr] = np.zeros(max(int(nbytes), 1), np.uint8)
        return ptr

    def copy_in(self, ptr: int, host: np.ndarray) -> None:
        self._bufs[ptr][: host.nbytes] = host.view(np.uint8).reshape(-1)

    def copy_out(self, host: np.ndarray, ptr: int) -> None:
        host.view(np.uint8).reshape(-1)[:] = self._bufs[ptr][: host.nbytes]

    def free(self, ptr: int) -> None:
        del self._bufs[ptr]

    @property
    def stream(self) -> int:
        return 0

    def synchronize(self) -> None:
        pass

    def mem_info(self) -> tuple[int, int]:
        return (1 << 30, 1 << 30)


def install(monkeypatch, major: int, world: World | None = None) -> types.ModuleType:
    """Put the fake in sys.modules['tensorrt'] and make calibkit see it (and host 'device' memory)."""
    import calibkit.trt as ck_trt
    import calibkit.trt.calibrators as calibrators
    import calibkit.trt.feed as feed

    mod = make(major, world)
    monkeypatch.setitem(sys.modules, "tensorrt", mod)
    monkeypatch.setattr(ck_trt, "_probe", lambda: (major, mod.__version__))
    monkeypatch.setattr(calibrators, "_classes", {})
    monkeypatch.setattr(feed, "open_device", lambda *a, **k: HostMemory())
    return mod
