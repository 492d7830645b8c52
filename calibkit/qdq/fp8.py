"""FP8 E4M3FN Q/DQ: the INT8 Q/DQ graph ONNX Runtime's quantizer writes, moved to the FP8 grid.

The placement (which tensors get a pair) is the same for both precisions; only the number
format changes, so the graph surgery stays in one place (calibkit/qdq/export.py) and this pass
rewrites the pairs it made, in the graph and in every If/Loop/Scan body:

- activations: per-tensor scale = float32(amax) / 448 (calibkit.numerics.formats.FP8) from the
  same scale table; zero point an FP8 zero (ONNX opset 19 ``FLOAT8E4M3FN``, element type 17).
- weights: re-quantized from the original float weight (never from its INT8 copy), per channel
  on the DequantizeLinear's axis: scale = max |w| over the channel / 448, values rounded to
  E4M3FN (nearest even, saturating), stored as FLOAT8E4M3FN initializers.

ONNX Runtime's own FP8 calibration derives scales from a distribution's standard deviation,
not amax, so its ``QFLOAT8E4M3FN`` path is not used (ModelOpt and TensorRT use amax / 448).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from calibkit.errors import CalibkitError
from calibkit.numerics.formats import DEGENERATE_AMAX, FP8, INT8, usable_amax

MIN_IR_VERSION = 9  # ONNX IR 9 introduced the float8 element types
QUANTIZED_NAME = re.compile(r"^(?P<base>.*)_quantized(_\d+)?$")  # ORT's and bodies.py's weight names


def _graphs(graph: onnx.GraphProto):
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _graphs(attr.g)
            for sub in attr.graphs:
                yield from _graphs(sub)


def float_weights(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """Every initializer (and Constant value) of the float model, bodies included, by name."""
    found: dict[str, onnx.TensorProto] = {}
    for g in _graphs(model.graph):
        for init in g.initializer:
            found.setdefault(init.name, init)
        for node in g.node:
            if node.op_type == "Constant" and node.output:
                for a in node.attribute:
                    if a.name == "value" and a.HasField("t"):
                        found.setdefault(node.output[0], a.t)
    return found


def _array(t: onnx.TensorProto, base_dir: Path | None) -> np.ndarray:
    if t.data_location == TensorProto.EXTERNAL and base_dir is None:
        raise CalibkitError(f"weight {t.name!r} is in external data; FP8 export needs it beside the model")
    return numpy_helper.to_array(t, base_dir=str(base_dir) if base_dir else "")


def _set(init: onnx.TensorProto, value: np.ndarray) -> None:
    init.CopyFrom(numpy_helper.from_array(value, init.name))


def _scale_like(init: onnx.TensorProto, scale: np.ndarray) -> np.ndarray:
    """``scale`` in the stored scale's type (float16 scales never round to zero)."""
    if init.data_type == TensorProto.FLOAT16:
        from calibkit.qdq.post import fp16_scale

        return fp16_scale(scale.astype(np.float32))
    return scale.astype(np.float32)


def weight_fp8(w: np.ndarray, axis: int | None, scale_dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """(E4M3FN values, scale) of float weight ``w``, per channel on ``axis`` (None: per tensor)."""
    import ml_dtypes  # onnx's own dependency: the numpy dtype of FLOAT8E4M3FN tensors

    w64 = np.asarray(w, dtype=np.float64)
    if axis is None:
        amax = np.array(usable_amax(float(np.max(np.abs(w64)))) if w64.size else DEGENERATE_AMAX)
        scale = np.asarray(np.float32(amax) / np.float32(FP8.qmax), dtype=np.float32)
        shaped = scale
    else:
        moved = np.moveaxis(np.abs(w64), axis, 0).reshape(w64.shape[axis], -1)
        amax = np.array([usable_amax(float(a)) for a in moved.max(axis=1)], dtype=np.float32)
        scale = (amax / np.float32(FP8.qmax)).astype(np.float32)
        shape = [1] * w64.ndim
        shape[axis] = -1
        shaped = scale.reshape(shape)
    scale = scale.astype(scale_dtype)
    values = FP8.levels(w64 / np.asarray(shaped, dtype=scale_dtype).astype(np.float64))
    return values.astype(ml_dtypes.float8_e4m3fn), scale


def _fp8_zero(shape) -> np.ndarray:
    import ml_dtypes

    return np.zeros(shape, dtype=ml_dtypes.float8_e4m3fn)


def convert(qdq: onnx.ModelProto, amax: dict[str, float], source: onnx.ModelProto, base_dir: Path | None = None) -> int:
    """Rewrite every INT8 Q/DQ pair of ``qdq`` (in place) to FP8 E4M3FN; returns how many
    activation scales changed. ``source``: the float model the export started from (its
    weights); ``base_dir``: where its external data lies."""
    originals = float_weights(source)
    inits: dict[str, onnx.TensorProto] = {}
    for g in _graphs(qdq.graph):
        for init in g.initializer:
            inits.setdefault(init.name, init)
    zero_points: set[str] = set()
    act_scales: dict[str, str] = {}  # scale initializer -> float tensor it quantizes
    weights: dict[str, tuple[str, str, int | None]] = {}  # quantized weight -> (scale, zp, axis)
    for g in _graphs(qdq.graph):
        for node in g.node:
            if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
                continue
            if len(node.input) < 3 or not node.input[2]:
                raise CalibkitError(f"{node.op_type} {node.name!r} has no zero point; cannot move it to FP8")
            zero_points.add(node.input[2])
            src = inits.get(node.input[0])
            if node.op_type == "QuantizeLinear" and src is None:
                act_scales[node.input[1]] = node.input[0]
            elif node.op_type == "DequantizeLinear" and src is not None and src.data_type == INT8.onnx_type:
                scale = numpy_helper.to_array(inits[node.input[1]])
                axis = next((a.i for a in node.attribute if a.name == "axis"), 1) if scale.size > 1 else None
                weights[node.input[0]] = (node.input[1], node.input[2], axis)
    for scale_name, tensor in act_scales.items():
        init = inits[scale_name]
        old = numpy_helper.to_array(init)
        a = amax.get(tensor)
        if a is None:  # a range ORT carried over from a neighbour: the INT8 scale's amax
            a = float(np.float32(old.astype(np.float32).reshape(-1)[0]) * np.float32(INT8.qmax))
        _set(init, _scale_like(init, np.asarray(FP8.scale(usable_amax(a)), dtype=np.float32).reshape(old.shape)))
    for qname, (scale_name, _, axis) in weights.items():
        m = QUANTIZED_NAME.match(qname)
        orig = originals.get(m.group("base")) if m else None
        if orig is None:
            raise CalibkitError(f"quantized weight {qname!r} has no float original in the model; cannot export FP8")
        w = _array(orig, base_dir)
        if axis is not None and axis < 0:
            axis += w.ndim
        scale_init = inits[scale_name]
        dtype = np.float16 if scale_init.data_type == TensorProto.FLOAT16 else np.float32
        values, scale = weight_fp8(w, axis, dtype)
        _set(inits[qname], values)
        _set(scale_init, _scale_like(scale_init, scale))
    for zp in zero_points:
        z = numpy_helper.to_array(inits[zp])
        if np.any(z != 0):
            raise CalibkitError(f"zero point {zp!r} is not zero; FP8 Q/DQ is symmetric")
        _set(inits[zp], _fp8_zero(z.shape))
    return len(act_scales)
