"""TensorRT steps shared by 10.x and 11.x builds: logger, ONNX parsing, optimization
profiles, timing cache, serialization."""

from __future__ import annotations

from pathlib import Path

from calibkit.errors import CalibkitError
from calibkit.outputs.atomic import write_bytes, write_text
from calibkit.trt.spec import BuildSpec

TRT_MAJORS = (10, 11)


def start(model_path: Path, flags: int = 0):
    """(builder, network, parser, logger) with the ONNX model parsed."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(model_path)):
        errors = [str(parser.get_error(i).desc()) for i in range(parser.num_errors)]
        raise CalibkitError(f"TensorRT cannot parse {model_path}: {errors[0] if errors else 'unknown error'}")
    return builder, network, parser, logger


def dynamic_inputs(network) -> dict[str, tuple[int, ...]]:
    dyn = {}
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = tuple(tensor.shape)
        if any(d < 0 for d in shape):
            dyn[tensor.name] = shape
    return dyn


def add_profile(builder, network, config, spec: BuildSpec):
    """The optimization profile from --shapes; None for a static model."""
    dyn = dynamic_inputs(network)
    missing = sorted(set(dyn) - set(spec.shapes))
    if missing:
        raise CalibkitError(
            f"input {missing[0]!r} has dynamic shape {dyn[missing[0]]}; pass --shapes {missing[0]}:MIN/OPT/MAX"
        )
    if not spec.shapes:
        return None
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in spec.shapes.items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    return profile


def load_timing_cache(config, path: Path | None):
    data = path.read_bytes() if path is not None and path.is_file() else b""
    cache = config.create_timing_cache(data)
    if not config.set_timing_cache(cache, False):
        raise CalibkitError(
            f"TensorRT refused the timing cache {path} (made on another GPU or TensorRT version?); delete it or pass --timing-cache with a new path"
        )
    return cache


def save_timing_cache(config, path: Path | None) -> None:
    if path is not None:
        write_bytes(path, bytes(config.get_timing_cache().serialize()))


def set_workspace(config, spec: BuildSpec) -> None:
    import tensorrt as trt

    if spec.workspace_mb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, spec.workspace_mb << 20)


def finish(builder, network, config, spec: BuildSpec, check=None) -> Path:
    """Build, then ``check()`` (raises a calibrator's stored error) BEFORE anything is written:
    a failed or partly calibrated build leaves no engine and no timing cache. Writes the engine,
    the timing cache and the engine's layer information (<engine>.layers.json, what trtexec's
    --exportLayerInfo writes)."""
    import tensorrt as trt

    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # per-layer precisions in the layer information
    serialized = builder.build_serialized_network(network, config)
    if check is not None:
        check()
    if serialized is None:
        raise CalibkitError(f"TensorRT could not build {spec.onnx.name}; see the TensorRT errors above")
    plan = bytes(serialized)
    info = engine_information(plan)
    save_timing_cache(config, spec.timing_cache)
    path = write_bytes(spec.engine, plan)
    write_text(spec.layer_info, info)
    return path


def engine_information(plan: bytes) -> str:
    """IEngineInspector's JSON for a serialized engine (built with ProfilingVerbosity.DETAILED)."""
    import tensorrt as trt

    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(plan)
    if engine is None:
        raise CalibkitError("TensorRT cannot load the engine it just built; see the TensorRT errors above")
    inspector = engine.create_engine_inspector()
    return inspector.get_engine_information(trt.LayerInformationFormat.JSON)
