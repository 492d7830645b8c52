"""TensorRT 10.x build: implicit quantization (INT8/FP16 builder flags, a calibrator fed by
calibkit's cache or data, calibration profile at OPT) or a Q/DQ model; layer precision
constraints for kept layers; timing cache reuse."""

from __future__ import annotations

from calibkit.errors import CalibkitError
from calibkit.graph.model import input_specs, load
from calibkit.trt import common
from calibkit.trt.calibrators import KINDS, make_calibrator
from calibkit.trt.feed import CalibrationFeed
from calibkit.trt.layers import layer_nodes
from calibkit.trt.prepare import notes
from calibkit.trt.spec import BuildSpec

TRT_MAJORS = (10,)


FLOATS = ("FLOAT", "HALF", "BF16")


def _keep_fp16(network, names: list[str], fp16_ok: bool) -> tuple[int, list[str]]:
    """Constrain every layer made from a kept ONNX node (matched through ``ILayer.metadata``,
    ``[ONNX Layer: <node>]``, so a node that became several layers is kept whole) to FP16; only
    float outputs get an output type (an INT32/INT64/bool output forced to FP16 fails the build
    under OBEY). Returns (layers constrained, kept names that matched no layer)."""
    import tensorrt as trt

    wanted = set(names)
    matched: set[str] = set()
    kept = 0
    dtype = trt.DataType.HALF if fp16_ok else trt.DataType.FLOAT
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        hits = wanted.intersection(layer_nodes(layer.name, layer.metadata)) | wanted.intersection([layer.name])
        if not hits:
            continue
        outputs = [j for j in range(layer.num_outputs) if layer.get_output(j).dtype.name in FLOATS]
        if not outputs:
            continue  # Shape, TopK indices, ...: nothing float to run in FP16
        layer.precision = dtype
        for j in outputs:
            layer.set_output_type(j, dtype)
        kept += 1
        matched |= hits
    missed = [n for n in names if n not in matched]
    if names and not kept:
        raise CalibkitError(
            f"none of the {len(names)} layers to keep in FP16 ({names[0]}, ...) is a layer of the TensorRT network; check the names"
        )
    return kept, missed


def _calibrator(spec: BuildSpec, version: str):
    model = load(spec.onnx)
    opt = {name: s[1] for name, s in spec.shapes.items()}
    feed = CalibrationFeed(
        input_specs(model, spec.batch_axes),
        KINDS[spec.calibrator][1],
        batch_size=spec.batch_size,
        data=spec.data,
        preprocess=spec.preprocess,
        opt_shapes=opt,
        cache_in=spec.cache,
        cache_out=spec.write_cache,
        trt_version=version,
        rebatch=spec.rebatch,
        max_samples=spec.max_samples,
    )
    return make_calibrator(spec.calibrator, feed)


def build(spec: BuildSpec, version: str) -> dict:
    import tensorrt as trt

    builder, network, _parser, _logger = common.start(spec.qdq or spec.onnx)
    config = builder.create_builder_config()
    common.set_workspace(config, spec)
    profile = common.add_profile(builder, network, config, spec)
    common.load_timing_cache(config, spec.timing_cache)
    fp16 = spec.fp16 or bool(spec.keep_fp16)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    calib = None
    if spec.quantized:
        config.set_flag(trt.BuilderFlag.INT8)
    ranged = None
    if spec.int8 and spec.ranges is not None:
        from calibkit.trt import ranges

        ranged = ranges.apply(network, ranges.read_amax(spec.ranges))
    elif spec.int8:
        calib = _calibrator(spec, version)
        config.int8_calibrator = calib
        if profile is not None:
            config.set_calibration_profile(_opt_profile(builder, spec))
    kept, missed = _keep_fp16(network, spec.keep_fp16, fp16) if spec.keep_fp16 else (0, [])
    if kept:
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    try:
        path = common.finish(builder, network, config, spec, check=lambda: _raise_stored(calib))
    finally:
        if calib is not None:
            calib.feed.close()
    said = notes(spec, 10)
    if ranged and ranged[1]:
        said.append(f"{len(ranged[1])} tensors of --ranges are not in the TensorRT network (e.g. {ranged[1][0]})")
    if missed:
        said.append(
            f"kept in FP16 but no TensorRT layer came from: {', '.join(missed)} (their ONNX nodes were folded away or fused; see the layer report)"
        )
    batches = calib.feed.batches_served if calib else 0
    return {
        "engine": path,
        "trt": version,
        "kept_fp16": kept,
        "calibration_batches": batches,
        "ranges": ranged[0] if ranged else 0,
        "notes": said,
    }


def _raise_stored(calib) -> None:
    """TensorRT swallows a calibrator's exceptions; the one calibkit kept is the real error."""
    if calib is not None and calib.error is not None:
        raise (
            calib.error
            if isinstance(calib.error, CalibkitError)
            else CalibkitError(f"calibration failed: {calib.error}")
        )


def _opt_profile(builder, spec: BuildSpec):
    """TensorRT calibrates at one shape: a profile with MIN = OPT = MAX = OPT."""
    profile = builder.create_optimization_profile()
    for name, (_lo, opt, _hi) in spec.shapes.items():
        profile.set_shape(name, opt, opt, opt)
    return profile
