"""Lint of a Q/DQ model: patterns TensorRT cannot fuse, or runs slower than FP16.

- ``conv-add-qdq``: a Q/DQ pair between a Conv (+BatchNorm, + constant bias) and the residual
  Add it feeds: TensorRT fuses Conv + Add only when the Conv side reaches the Add in float
  (developer guide, Explicit Quantization; NVIDIA/TensorRT#4366, #3861).
- ``concat-scales``: a Concat whose quantized inputs have different scales, or that reads some
  activations quantized and others in float: TensorRT cannot eliminate the Concat and
  requantizes (NVIDIA/TensorRT#3197; ModelOpt's concat_elimination).
- ``constant-qdq``: a Q/DQ pair on a tensor computed from constants only (a bias through a
  Reshape), or on a constant that is not a Conv/Gemm/MatMul weight (a bias initializer read by
  an Add): TensorRT folds the constant into the layer; the pair only blocks that (a Q on a
  weight initializer that a compute op reads as its weight is how weights are quantized, and
  is not reported).
- ``zero-point``: a nonzero zero point: TensorRT supports symmetric quantization only.
- ``scale``: a scale that is not a finite positive number (NaN, inf, 0, negative): the ONNX
  spec leaves such a Q/DQ undefined and the builder rejects it or its output is garbage.
- ``island``: a quantized compute layer whose nearest compute neighbours upstream and
  downstream all run in float: its Q/DQ reformats cost more than INT8/FP8 saves.

The bodies of If/Loop/Scan nodes are linted too (node names ``IF_NODE/branch/NODE``); a body's
constants that come from the outer graph are read from there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from calibkit.qdq.index import GraphIndex
from calibkit.qdq.placement import COMPUTE_OPS, RESIDUAL_JOIN, activation_inputs, weighted_source

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
LINTS = ("conv-add-qdq", "concat-scales", "constant-qdq", "zero-point", "scale", "island")


@dataclass(frozen=True)
class Finding:
    lint: str
    node: str
    message: str


def lint(model: onnx.ModelProto) -> list[Finding]:
    """Every finding of the main graph and of its nodes' bodies, in graph order."""
    return _lint_graph(model.graph, [], "")


def _lint_graph(graph: onnx.GraphProto, outer: list, prefix: str) -> list[Finding]:
    from calibkit.qdq.rules import constant_tensors

    body = onnx.ModelProto()
    body.graph.CopyFrom(graph)
    body.graph.initializer.extend(outer)  # the outer graph's constants a body reads
    g = GraphIndex(body)
    computed = constant_tensors(body.graph) - g.weights
    out: list[Finding] = []

    def find(lint_name: str, node, message: str) -> None:
        out.append(Finding(lint_name, prefix + node.name, message))

    for node in g.nodes:
        if node.op_type == "QuantizeLinear" and node.input[0] in computed:
            find(
                "constant-qdq", node, f"QuantizeLinear {node.name!r} on {node.input[0]!r}, computed from constants only"
            )
        elif node.op_type == "QuantizeLinear" and node.input[0] in g.weights:
            misuse = _non_weight_reader(g, node)
            if misuse is not None:
                find(
                    "constant-qdq",
                    node,
                    f"QuantizeLinear {node.name!r} on the constant {node.input[0]!r}, which {misuse.op_type} "
                    f"{misuse.name!r} reads as an operand, not as a Conv/Gemm/MatMul weight (a bias?)",
                )
        if node.op_type in QDQ_OPS and len(node.input) > 1:
            sc = g.constant(node.input[1])
            if sc is not None and not (np.all(np.isfinite(sc.astype(np.float64))) and np.all(sc.astype(np.float64) > 0)):
                find("scale", node, f"{node.op_type} {node.name!r}: scale {node.input[1]!r} is not finite and positive")
        if node.op_type in QDQ_OPS and len(node.input) > 2 and node.input[2]:
            zp = g.constant(node.input[2])
            if zp is not None and np.any(zp.astype(np.float64) != 0):
                find("zero-point", node, f"{node.op_type} {node.name!r}: zero point is not 0")
        if node.op_type == RESIDUAL_JOIN and len(node.input) == 2:
            for i in node.input:
                q = g.dq_source(i)
                if q is not None and weighted_source(q.input[0], g.producer) is not None:
                    src = weighted_source(q.input[0], g.producer)
                    find(
                        "conv-add-qdq",
                        node,
                        f"Add {node.name!r}: Q/DQ on {q.input[0]!r} between {src.op_type} {src.name!r} and the Add; TensorRT cannot fuse them",
                    )
        if node.op_type == "Concat":
            scales = {}
            plain = []
            for i in node.input:
                q = g.dq_source(i)
                if q is not None:
                    scales[q.input[0]] = g.scale(q)
                elif i and i not in g.weights and i not in computed:
                    plain.append(i)
            if scales and plain:
                find(
                    "concat-scales",
                    node,
                    f"Concat {node.name!r}: reads {', '.join(scales)} quantized but {', '.join(plain)} in float; "
                    "TensorRT cannot eliminate it",
                )
            elif len(set(scales.values())) > 1:
                shown = ", ".join(f"{k} {v:.6g}" for k, v in scales.items())
                find(
                    "concat-scales",
                    node,
                    f"Concat {node.name!r}: input scales differ ({shown}); TensorRT requantizes instead of eliminating it",
                )
        if node.op_type in COMPUTE_OPS and g.quantized(node):
            ups = g.neighbours([g.float_name(i) for i in activation_inputs(node)], up=True)
            downs = g.neighbours([o for o in node.output if o], up=False)
            if ups and downs and not any(g.quantized(n) for n in ups + downs):
                find(
                    "island",
                    node,
                    f"{node.op_type} {node.name!r}: quantized between float layers only (a one-layer island)",
                )
        for a in node.attribute:
            subs = [(a.name, a.g)] if a.type == onnx.AttributeProto.GRAPH else []
            subs += [(f"{a.name}{k}", sg) for k, sg in enumerate(a.graphs)]
            for name, sg in subs:
                seen = {i.name for i in sg.initializer}
                inherited = [i for i in body.graph.initializer if i.name not in seen]
                out += _lint_graph(sg, inherited, f"{prefix}{node.name}/{name}/")
    return out


def _non_weight_reader(g: GraphIndex, q: onnx.NodeProto):
    """A node that reads the dequantized constant of ``q`` other than as a compute op's weight
    (None when every reader is a Conv/ConvTranspose/Gemm/MatMul weight slot)."""
    for dq in g.consumers.get(q.output[0], []):
        if dq.op_type != "DequantizeLinear":
            return dq
        for reader in g.consumers.get(dq.output[0], []):
            slots = [k for k, i in enumerate(reader.input) if i == dq.output[0]]
            weight_slots = {0, 1} if reader.op_type == "MatMul" else {1}  # Conv/Gemm: slot 2 is the bias
            if reader.op_type not in COMPUTE_OPS or set(slots) - weight_slots:
                return reader
    return None


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
