"""Edits of the Q/DQ model ONNX Runtime's quantizer writes, before it is checked and published.

- float16 graphs: ORT writes float32 scales for activations; ONNX (opset >= 19) and TensorRT's
  strongly typed networks want the scale in the type of the tensor quantized (x and y_scale
  share the type T1), so those scales become float16 (and DequantizeLinear then yields float16).
- TensorRT placement, residual Add: TensorRT fuses Conv (+BatchNorm) + Add (+ReLU); the fused
  layer's output precision follows the Add's *other* (skip) input, so that input gets a Q/DQ
  pair on the Add's edge (reusing the tensor's pair where one exists). The Conv output itself
  stays float (outputs of weighted ops are not quantized).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from calibkit.artifacts.scales import int8_scale
from calibkit.qdq.placement import RESIDUAL_JOIN, weighted_source

FP16_TINY = float(np.finfo(np.float16).smallest_subnormal)


def fp16_activations(model: onnx.ModelProto) -> set[str]:
    """float16 tensors of the graph and of every If/Loop/Scan body."""
    from calibkit.graph.subgraphs import tensor_types

    return {n for n, t in tensor_types(model).items() if t == TensorProto.FLOAT16}


def fp16_scale(scale: np.ndarray) -> np.ndarray:
    """A float32 scale as float16, never rounded to zero."""
    return np.maximum(np.asarray(scale).astype(np.float16), np.float16(FP16_TINY))


def float16_scales(qdq: onnx.ModelProto, half: set[str]) -> int:
    """Make the scale of every QuantizeLinear on a float16 tensor float16; returns how many."""
    inits = {i.name: i for i in qdq.graph.initializer}
    changed = 0
    for node in qdq.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] not in half:
            continue
        init = inits.get(node.input[1])
        if init is None or init.data_type != TensorProto.FLOAT:
            continue
        scale = fp16_scale(numpy_helper.to_array(init))
        init.CopyFrom(numpy_helper.from_array(scale, init.name))
        changed += 1
    return changed


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in graph.node for o in n.output}


def residual_inputs(
    model: onnx.ModelProto, amax: dict[str, float], skipped: set[str] = frozenset(), constants=()
) -> dict[str, str]:
    """{Add node name: skip input to quantize} for Conv(+BN) + Add residual joins; a Conv kept
    in float (``skipped``) makes no join, and neither does a skipped Add, nor a skip input
    computed from constants only (a bias reached through a Reshape: TensorRT folds it into the
    layer, and a Q/DQ pair there only blocks that), in every placement. ``constants``: the
    trt-fused placement's constant tensors, which ``weighted_source`` also sees through."""
    from calibkit.qdq.rules import constant_tensors

    never = set(constants) | constant_tensors(model.graph)
    prod = _producers(model.graph)
    found: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type != RESIDUAL_JOIN or len(node.input) != 2 or node.name in skipped:
            continue
        a, b = node.input
        wa = weighted_source(a, prod, skipped, constants) is not None
        wb = weighted_source(b, prod, skipped, constants) is not None
        if wa == wb:
            continue
        skip = b if wa else a
        if skip in amax and skip not in never:
            found[node.name] = skip
    return found


def quantize_residuals(
    qdq, joins: dict[str, str], amax: dict[str, float], dtype: int = TensorProto.FLOAT, fresh=None
) -> int:
    """Insert (or reuse) a Q/DQ pair on each join's skip edge; returns how many edges changed.
    ``qdq``: anything with a ``graph`` (a model, or a body wrapped); ``fresh(base)``: an unused
    name prefix for the new pair (default ``base`` itself)."""
    g = qdq.graph
    dq_of = {}
    q_src = {n.output[0]: n.input[0] for n in g.node if n.op_type == "QuantizeLinear"}
    for n in g.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in q_src:
            dq_of.setdefault(q_src[n.input[0]], n.output[0])
    by_name = {n.name: n for n in g.node}
    before: dict[str, list[onnx.NodeProto]] = {}
    changed = 0
    for add_name, skip in joins.items():
        add = by_name.get(add_name)
        if add is not None and skip in dq_of and dq_of[skip] in add.input:
            changed += 1  # ORT already points the join at the tensor's pair
            continue
        if add is None or skip not in add.input:
            continue
        if skip not in dq_of:
            base = fresh(f"{skip}_residual") if fresh else f"{skip}_residual"
            scale = np.array(int8_scale(amax[skip]), dtype=np.float16 if dtype == TensorProto.FLOAT16 else np.float32)
            g.initializer.extend(
                [
                    numpy_helper.from_array(scale, f"{base}_scale"),
                    numpy_helper.from_array(np.array(0, np.int8), f"{base}_zero_point"),
                ]
            )
            before[add_name] = [
                helper.make_node(
                    "QuantizeLinear",
                    [skip, f"{base}_scale", f"{base}_zero_point"],
                    [f"{base}_q"],
                    name=f"{base}_QuantizeLinear",
                ),
                helper.make_node(
                    "DequantizeLinear",
                    [f"{base}_q", f"{base}_scale", f"{base}_zero_point"],
                    [f"{base}_dq"],
                    name=f"{base}_DequantizeLinear",
                ),
            ]
            dq_of[skip] = f"{base}_dq"
        add.input[list(add.input).index(skip)] = dq_of[skip]
        changed += 1
    if before:  # keep topological order: each new pair goes right before its Add
        order = [m for n in g.node for m in [*before.get(n.name, []), n]]
        del g.node[:]
        g.node.extend(order)
    return changed


def float_weighted_side(qdq: onnx.ModelProto, joins: dict[str, str]) -> int:
    """Point each residual join's Conv-side input back at the float tensor where ORT's quantizer
    pointed it at a dequantized copy (the Conv output is quantized for another consumer, e.g. a
    pooling): TensorRT fuses Conv + Add only with the Conv side in float. Returns how many."""
    g = qdq.graph
    q_src = {n.output[0]: n.input[0] for n in g.node if n.op_type == "QuantizeLinear"}
    float_of = {
        n.output[0]: q_src[n.input[0]] for n in g.node if n.op_type == "DequantizeLinear" and n.input[0] in q_src
    }
    changed = 0
    for node in g.node:
        skip = joins.get(node.name)
        if skip is None:
            continue
        for i, name in enumerate(node.input):
            if name in float_of and float_of[name] != skip:
                node.input[i] = float_of[name]
                changed += 1
    return changed


def float_consumers(qdq: onnx.ModelProto, quantized: set[str]) -> int:
    """Let nodes outside ``quantized`` read the float tensor, not its dequantized copy.

    ONNX Runtime's quantizer points every consumer of a quantized tensor at the
    DequantizeLinear output; with TensorRT placement only the quantized ops (and residual
    joins) should see INT8 values, as in a QAT export where the fake-quant sits on the op's
    input. Returns how many inputs were pointed back at the float tensor.
    """
    g = qdq.graph
    q_src = {n.output[0]: n.input[0] for n in g.node if n.op_type == "QuantizeLinear"}
    float_of = {
        n.output[0]: q_src[n.input[0]] for n in g.node if n.op_type == "DequantizeLinear" and n.input[0] in q_src
    }
    outputs = {o.name for o in g.output}
    changed = 0
    for node in g.node:
        if node.name in quantized or node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for i, name in enumerate(node.input):
            if name in float_of and float_of[name] not in outputs:
                node.input[i] = float_of[name]
                changed += 1
    return changed
