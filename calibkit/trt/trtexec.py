"""The ``trtexec`` command equivalent to a ``calibkit build`` (works without TensorRT)."""

from __future__ import annotations

import shlex
from pathlib import Path

from calibkit.trt.spec import BuildSpec, Shape


def _shape(s: Shape) -> str:
    return "x".join(str(d) for d in s)


def command(spec: BuildSpec, major: int, model: Path | None = None) -> str:
    """``model`` is the ONNX file trtexec parses (for 11.x the prepared Q/DQ / FP16 model)."""
    args = ["trtexec", f"--onnx={model or spec.onnx}", f"--saveEngine={spec.engine}"]
    for key, i in (("minShapes", 0), ("optShapes", 1), ("maxShapes", 2)):
        if spec.shapes:
            args.append(f"--{key}=" + ",".join(f"{n}:{_shape(s[i])}" for n, s in spec.shapes.items()))
    if major >= 11:
        args.append("--stronglyTyped")  # 11.x: precision comes from the model's types and Q/DQ
    else:
        if spec.qdq is not None:
            args = [a if not a.startswith("--onnx=") else f"--onnx={spec.qdq}" for a in args]
        if spec.int8:
            args.append("--int8")
            if spec.cache:
                args.append(f"--calib={spec.cache}")
        elif spec.qdq is not None:
            args.append("--int8")
        if spec.fp16 or spec.keep_fp16:
            args.append("--fp16")
        if spec.keep_fp16:
            args.append("--layerPrecisions=" + ",".join(f"{n}:fp16" for n in spec.keep_fp16))
            args.append("--layerOutputTypes=" + ",".join(f"{n}:fp16" for n in spec.keep_fp16))
            args.append("--precisionConstraints=obey")
    args += ["--profilingVerbosity=detailed", f"--exportLayerInfo={spec.layer_info}"]  # read by `calibkit inspect`
    if spec.timing_cache:
        args.append(f"--timingCacheFile={spec.timing_cache}")
    if spec.workspace_mb:
        args.append(f"--memPoolSize=workspace:{spec.workspace_mb}M")
    return shlex.join(args)
