"""TensorRT 10.x build: implicit quantization (INT8/FP16 builder flags, a calibrator fed by
calibkit's cache or data, calibration profile at OPT) or a Q/DQ model; layer precision
constraints for kept layers; timing cache reuse."""

from __future__ import annotations

from calibkit.errors import CalibkitError
from calibkit.graph.model import input_specs, load
from calibkit.trt import common
from calibkit.trt.calibrators import KINDS, make_calibrator
from calibkit.trt.feed import CalibrationFeed
from calibkit.trt.prepare import notes
from calibkit.trt.spec import BuildSpec

TRT_MAJORS = (10,)


def _keep_fp16(network, names: list[str], fp16_ok: bool) -> int:
    import tensorrt as trt

    wanted = set(names)
    kept = 0
    dtype = trt.DataType.HALF if fp16_ok else trt.DataType.FLOAT
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.name in wanted:
            layer.precision = dtype
            for j in range(layer.num_outputs):
                layer.set_output_type(j, dtype)
            kept += 1
            wanted.discard(layer.name)
    if names and not kept:
        raise CalibkitError(f"none of the {len(names)} layers to keep in FP16 ({names[0]}, ...) is a layer of the TensorRT network; check the names")
    return kept


def _calibrator(spec: BuildSpec, version: str):
    model = load(spec.onnx)
    opt = {name: s[1] for name, s in spec.shapes.items()}
    feed = CalibrationFeed(
        input_specs(model, spec.batch_axes), KINDS[spec.calibrator][1], batch_size=spec.batch_size, data=spec.data, preprocess=spec.preprocess,
        opt_shapes=opt, cache_in=spec.cache, cache_out=spec.write_cache, trt_version=version, rebatch=spec.rebatch, max_samples=spec.max_samples,
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
    if spec.int8:
        calib = _calibrator(spec, version)
        config.int8_calibrator = calib
        if profile is not None:
            config.set_calibration_profile(_opt_profile(builder, spec))
    kept = _keep_fp16(network, spec.keep_fp16, fp16) if spec.keep_fp16 else 0
    if kept:
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    try:
        path = common.finish(builder, network, config, spec, check=lambda: _raise_stored(calib))
    finally:
        if calib is not None:
            calib.feed.close()
    return {"engine": path, "trt": version, "kept_fp16": kept, "calibration_batches": calib.feed.batches_served if calib else 0,
            "notes": notes(spec, 10)}


def _raise_stored(calib) -> None:
    """TensorRT swallows a calibrator's exceptions; the one calibkit kept is the real error."""
    if calib is not None and calib.error is not None:
        raise calib.error if isinstance(calib.error, CalibkitError) else CalibkitError(f"calibration failed: {calib.error}")


def _opt_profile(builder, spec: BuildSpec):
    """TensorRT calibrates at one shape: a profile with MIN = OPT = MAX = OPT."""
    profile = builder.create_optimization_profile()
    for name, (_lo, opt, _hi) in spec.shapes.items():
        profile.set_shape(name, opt, opt, opt)
    return profile


