"""The ONNX model a TensorRT 11 build parses (no TensorRT needed to make it).

TensorRT 11 has no calibrators and no INT8/FP16 builder flags: the network is strongly
typed, so INT8 comes from calibkit's Q/DQ model (from ``--cache`` scales, or ``--qdq``) and
FP16 from the FP16-converted model. Layers kept in FP16 get no Q/DQ.
"""

from __future__ import annotations

import re
from pathlib import Path

import onnx

from calibkit.errors import CalibkitError
from calibkit.outputs.atomic import write_bytes
from calibkit.trt.spec import BuildSpec


def keep_regex(layers: list[str]) -> str | None:
    return "^(" + "|".join(re.escape(n) for n in layers) + ")$" if layers else None


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """ONNX Runtime's float16 converter, FP32 I/O kept, Q/DQ left in float32 (their scales
    stay FP32 as TensorRT's strongly typed Q/DQ expect)."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    block = list(DEFAULT_OP_BLOCK_LIST) + ["QuantizeLinear", "DequantizeLinear"]
    return topo_sort(
        convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False, op_block_list=block)
    )


def topo_sort(model: onnx.ModelProto) -> onnx.ModelProto:
    """Reorder nodes so each comes after its inputs' producers (the converter appends the
    casts it inserts at graph inputs after their consumers)."""
    from calibkit.graph.subgraphs import topo_sort as sort_graph

    unresolved = sort_graph(model.graph)
    if unresolved:
        raise CalibkitError(f"the FP16 model has a cycle through {unresolved[0]!r}")
    return model


def notes(spec: BuildSpec, major: int) -> list[str]:
    """What the build does beyond what was asked, in words for the user."""
    if not spec.keep_fp16 or spec.fp16:
        return []
    kept = ", ".join(spec.keep_fp16[:4]) + (", ..." if len(spec.keep_fp16) > 4 else "")
    if major >= 11:
        return [
            f"TensorRT 11 has no FP16 flag: the layers kept out of INT8 ({kept}) run FP16 through the FP16-converted model "
            f"{spec.engine.with_suffix('').name}.trt11.fp16.onnx, so the other float layers run FP16 too (as with --fp16)"
        ]
    return [
        f"the layers kept out of INT8 ({kept}) run FP16 with the FP16 builder flag (trtexec --fp16), which lets TensorRT run other float layers in FP16 too"
    ]


def prepare_v11(spec: BuildSpec) -> Path:
    """Write (beside the engine) and return the model a strongly typed build parses. Its names
    (``<engine stem>.trt11.qdq.onnx`` / ``.trt11.fp16.onnx``) are the build's own, so a user's
    ``<stem>.qdq.onnx`` from export-qdq is never replaced."""
    from calibkit.qdq.export import export_qdq

    stem = spec.engine.with_suffix("")
    if spec.int8 and spec.cache is None and spec.ranges is None:
        raise CalibkitError(
            "TensorRT 11 has no calibrators: run `calibkit calibrate` and pass --int8 --cache MODEL.cache (or --qdq)"
        )
    path = spec.onnx
    if spec.qdq is not None:
        path = spec.qdq
        if spec.keep_fp16:
            raise CalibkitError(
                "--keep-fp16 with --qdq on TensorRT 11: re-export the Q/DQ model with `calibkit export-qdq --exclude-nodes` instead"
            )
    elif spec.int8:
        model = onnx.load(str(spec.onnx))
        from calibkit.trt.ranges import amax_from_cache, read_amax

        amax = read_amax(spec.ranges) if spec.ranges is not None else amax_from_cache(spec.cache)
        path = export_qdq(
            model, amax, Path(f"{stem}.trt11.qdq.onnx"), placement="trt", exclude_nodes=keep_regex(spec.keep_fp16)
        )
    if spec.fp16 or spec.keep_fp16:  # a layer kept out of INT8 runs FP16 only in an FP16 model (11 has no FP16 flag)
        model = to_fp16(onnx.load(str(path)))
        path = Path(f"{stem}.trt11.fp16.onnx")
        write_bytes(path, model.SerializeToString())
    return path
