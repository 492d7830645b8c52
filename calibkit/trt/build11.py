"""TensorRT 11.x build: a strongly typed network from calibkit's Q/DQ model (INT8) and/or
the FP16-converted model (prepare.py); there are no calibrators or precision flags."""

from __future__ import annotations

from calibkit.trt import common
from calibkit.trt.prepare import notes, prepare_v11
from calibkit.trt.spec import BuildSpec

TRT_MAJORS = (11,)


def build(spec: BuildSpec, version: str) -> dict:
    model = prepare_v11(spec)
    builder, network, _parser, _logger = common.start(model)  # 11.x networks are always strongly typed
    config = builder.create_builder_config()
    common.set_workspace(config, spec)
    common.add_profile(builder, network, config, spec)
    common.load_timing_cache(config, spec.timing_cache)
    path = common.finish(builder, network, config, spec)
    return {
        "engine": path,
        "trt": version,
        "parsed": model,
        "kept_fp16": len(spec.keep_fp16),
        "calibration_batches": 0,
        "notes": notes(spec, 11),
    }
