"""Lint of a Q/DQ model: patterns TensorRT cannot fuse, or runs slower than FP16.

- ``conv-add-qdq``: a Q/DQ pair between a Conv (+BatchNorm, + constant bias) and the residual
  Add it feeds: TensorRT fuses Conv + Add only when the Conv side reaches the Add in float
  (developer guide, Explicit Quantization; NVIDIA/TensorRT#4366, #3861).
- ``concat-scales``: a Concat whose quantized inputs have different scales: TensorRT cannot
  eliminate the Concat and requantizes (NVIDIA/TensorRT#3197; ModelOpt's concat_elimination).
- ``constant-qdq``: a Q/DQ pair on a tensor computed from constants only (a bias through a
  Reshape): TensorRT folds the constant into the layer; the pair only blocks that (a Q on a
  weight initializer itself is how weights are quantized, and is not reported).
- ``zero-point``: a nonzero zero point: TensorRT supports symmetric quantization only.
- ``island``: a quantized compute layer whose nearest compute neighbours upstream and
  downstream all run in float: its Q/DQ reformats cost more than INT8/FP8 saves.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from calibkit.qdq.index import GraphIndex
from calibkit.qdq.placement import COMPUTE_OPS, RESIDUAL_JOIN, activation_inputs, weighted_source

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
LINTS = ("conv-add-qdq", "concat-scales", "constant-qdq", "zero-point", "island")


@dataclass(frozen=True)
class Finding:
    lint: str
    node: str
    message: str


def lint(model: onnx.ModelProto) -> list[Finding]:
    """Every finding of the main graph, in graph order."""
    from calibkit.qdq.rules import constant_tensors

    g = GraphIndex(model)
    computed = constant_tensors(model.graph) - g.weights
    out: list[Finding] = []
    for node in g.nodes:
        if node.op_type == "QuantizeLinear" and node.input[0] in computed:
            out.append(
                Finding(
                    "constant-qdq",
                    node.name,
                    f"QuantizeLinear {node.name!r} on {node.input[0]!r}, computed from constants only",
                )
            )
        if node.op_type in QDQ_OPS and len(node.input) > 2 and node.input[2] in g.inits:
            zp = numpy_helper.to_array(g.inits[node.input[2]]).astype(np.float64)
            if np.any(zp != 0):
                out.append(Finding("zero-point", node.name, f"{node.op_type} {node.name!r}: zero point is not 0"))
        if node.op_type == RESIDUAL_JOIN and len(node.input) == 2:
            for i in node.input:
                q = g.dq_source(i)
                if q is not None and weighted_source(q.input[0], g.producer) is not None:
                    src = weighted_source(q.input[0], g.producer)
                    out.append(
                        Finding(
                            "conv-add-qdq",
                            node.name,
                            f"Add {node.name!r}: Q/DQ on {q.input[0]!r} between {src.op_type} {src.name!r} and the Add; TensorRT cannot fuse them",
                        )
                    )
        if node.op_type == "Concat":
            scales = {}
            for i in node.input:
                q = g.dq_source(i)
                if q is not None:
                    scales[q.input[0]] = g.scale(q)
            if len(set(scales.values())) > 1:
                shown = ", ".join(f"{k} {v:.6g}" for k, v in scales.items())
                out.append(
                    Finding(
                        "concat-scales",
                        node.name,
                        f"Concat {node.name!r}: input scales differ ({shown}); TensorRT requantizes instead of eliminating it",
                    )
                )
        if node.op_type in COMPUTE_OPS and g.quantized(node):
            ups = g.neighbours([g.float_name(i) for i in activation_inputs(node)], up=True)
            downs = g.neighbours([o for o in node.output if o], up=False)
            if ups and downs and not any(g.quantized(n) for n in ups + downs):
                out.append(
                    Finding(
                        "island",
                        node.name,
                        f"{node.op_type} {node.name!r}: quantized between float layers only (a one-layer island)",
                    )
                )
    return out


def placement_rows(model: onnx.ModelProto) -> list[tuple[str, str, bool]]:
    """(node, op type, quantized) for the compute, pooling and Concat nodes of a Q/DQ model."""
    g = GraphIndex(model)
    rows = []
    for n in g.nodes:
        if n.op_type in COMPUTE_OPS:
            rows.append((n.name, n.op_type, g.quantized(n)))
        elif n.op_type in ("MaxPool", "AveragePool", "GlobalAveragePool", "Concat", "Resize", RESIDUAL_JOIN):
            rows.append((n.name, n.op_type, any(g.dq_source(i) is not None for i in n.input)))
    return rows


def activation_q_count(model: onnx.ModelProto) -> int:
    """QuantizeLinear nodes on activations (not on constants) in the main graph."""
    g = GraphIndex(model)
    return sum(1 for n in g.nodes if n.op_type == "QuantizeLinear" and n.input[0] not in g.weights)
