"""Normalising the graph forms exporters write, in a copy, before Q/DQ export.

- Weights as ``Constant`` nodes (Paddle2ONNX, some tf2onnx/spox graphs) become initializers:
  ONNX Runtime's quantizer only treats initializers as weights; a Constant-node weight is
  taken for an activation and refused for lack of a range. The tensors keep their names, so
  the activations (and their scales) are the same as for the initializer form.
- Opsets below 13 are raised to 13 with ``onnx.version_converter``: per-channel
  ``DequantizeLinear`` (the ``axis`` attribute) exists from opset 13.

The original model (and its file) is never modified.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from calibkit.errors import CalibkitError

QDQ_MIN_OPSET = 13

_SCALAR_ATTRS = {
    "value_float": (TensorProto.FLOAT, False),
    "value_floats": (TensorProto.FLOAT, True),
    "value_int": (TensorProto.INT64, False),
    "value_ints": (TensorProto.INT64, True),
}


def constant_tensor(node: onnx.NodeProto) -> onnx.TensorProto | None:
    """The tensor a Constant node holds, named after its output; None for sparse/string forms."""
    for attr in node.attribute:
        if attr.name == "value":
            t = onnx.TensorProto()
            t.CopyFrom(attr.t)
            t.name = node.output[0]
            return t
        if attr.name in _SCALAR_ATTRS:
            dtype, is_list = _SCALAR_ATTRS[attr.name]
            vals = list(attr.floats or attr.ints) if is_list else [attr.f if dtype == TensorProto.FLOAT else attr.i]
            return helper.make_tensor(node.output[0], dtype, [len(vals)] if is_list else [], vals)
    return None


def fold_constant_nodes(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A copy whose top-level ``Constant`` nodes are initializers; returns (copy, how many)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    kept: list[onnx.NodeProto] = []
    folded: list[onnx.TensorProto] = []
    for node in g.node:
        tensor = constant_tensor(node) if node.op_type == "Constant" and node.domain in ("", "ai.onnx") else None
        if tensor is None:
            kept.append(node)
        else:
            folded.append(tensor)
    if not folded:
        return m, 0
    del g.node[:]
    g.node.extend(kept)
    g.initializer.extend(folded)
    if m.ir_version < 4:  # before IR 4 every initializer must also be a graph input
        m.ir_version = 4
    return m, len(folded)


def default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def upgrade_opset(model: onnx.ModelProto, minimum: int = QDQ_MIN_OPSET) -> tuple[onnx.ModelProto, int | None]:
    """``model`` at opset >= ``minimum`` (converted copy when needed); returns (model, old opset or None)."""
    old = default_opset(model)
    if old >= minimum:
        return model, None
    from onnx import version_converter

    try:
        converted = version_converter.convert_version(model, minimum)
    except Exception as exc:  # the converter raises RuntimeError/ValueError/ConvertError
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CalibkitError(
            f"the model is opset {old}; per-channel Q/DQ needs opset >= {minimum} and onnx's version converter failed ({first}); re-export the model with opset >= {minimum}"
        ) from None
    return converted, old


def prepare(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """The copy ``quantize_static`` gets: Constant weights folded, opset >= 13. Returns (copy, notes)."""
    notes: list[str] = []
    m, n = fold_constant_nodes(model)
    if n:
        notes.append(f"{n} Constant nodes taken as initializers")
    m, old = upgrade_opset(m)
    if old is not None:
        notes.append(f"opset {old} converted to {QDQ_MIN_OPSET} for per-channel Q/DQ")
    return m, notes
