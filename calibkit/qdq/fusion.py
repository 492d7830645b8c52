"""Which tensors TensorRT fuses away: they are never INT8 boundaries, so no scale of theirs is read.

TensorRT fuses a weighted layer with the pointwise epilogue that follows it into one kernel
(developer guide, "Layer Fusion Catalog"/"Types of Fusions": Convolution + Scale (an ONNX
BatchNormalization is parsed as a Scale layer), Convolution + ReLU / GELU / Clip / generic
activation, a bias or scale elementwise op with a constant operand folded into the layer's
weights, FullyConnected/MatMul + bias + activation). The tensors between the members of such a
fused layer exist only in the unfused network: the fused layer reads its input and writes its
last output, and those two are the only tensors whose scales an INT8 build can use. ModelOpt
builds the same groups to place its Q/DQ (``modelopt/onnx/quantization/partitioning.py``,
``_build_fusible_partition``: a linear op grows a partition through BatchNormalization, Relu
and pointwise ops whose other inputs are constants) and puts no Q/DQ inside them.

The rule here is a conservative subset of ModelOpt's, so it keeps tensors rather than drop one
TensorRT may read:

- a layer starts at a weighted op: Conv, ConvTranspose, or Gemm/MatMul whose second input is a
  constant (a fully connected layer);
- it grows through BatchNormalization (after Conv/ConvTranspose), pointwise activations and
  Add/Sub/Mul/Div whose non-constant inputs all come from the layer (a bias, Swish's
  Mul(conv, Sigmoid(conv)), the decomposed hard-swish x * Clip(x + 3, 0, 6) / 6);
- a tensor of the layer is internal only if every reader is in the layer and it is not a graph
  output; what leaves the layer is kept;
- residual joins (an Add of two layers' outputs) are no member: TensorRT's Conv + elementwise-sum
  fusion needs the skip input quantized, and the Q/DQ placement reads the Add's inputs
  (calibkit/qdq/placement.py), so both are kept. (ModelOpt also grows through MaxPool after a
  Conv-activation and the non-residual Add input; not done here.)

Used by the collector (``calibrate --tensors trt``, the default): tensors this returns get no
histogram and are listed in scales.json with the reason.
"""

from __future__ import annotations

import onnx

# The layers a fused chain starts at (ModelOpt's is_linear_op, less activation x activation
# MatMul, which has no weights to fold an epilogue into).
CHAIN_HEADS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# Epilogue members: BatchNormalization folds into the weights of a Conv/ConvTranspose only.
NORMALIZATION = ("BatchNormalization",)
NORMALIZED_HEADS = ("Conv", "ConvTranspose")
# Pointwise activations TensorRT runs inside a convolution / GEMM kernel's epilogue.
ACTIVATIONS = (
    "Relu",
    "LeakyRelu",
    "PRelu",
    "Sigmoid",
    "HardSigmoid",
    "HardSwish",
    "Tanh",
    "Clip",
    "Elu",
    "Selu",
    "Softplus",
    "Gelu",
    "ThresholdedRelu",
)
# Elementwise ops of the epilogue (a constant operand folds into the weights/bias; two operands
# from the layer make a pointwise epilogue such as Swish).
CONSTANT_ELEMENTWISE = ("Add", "Sub", "Mul", "Div")


def _constants(graph: onnx.GraphProto) -> set[str]:
    """Initializers and Constant node outputs (what an epilogue's other operand may be)."""
    names = {i.name for i in graph.initializer}
    names.update(o for n in graph.node if n.op_type == "Constant" for o in n.output)
    return names


def _is_head(node: onnx.NodeProto, constants: set[str]) -> bool:
    if node.op_type not in CHAIN_HEADS:
        return False
    if node.op_type in ("Gemm", "MatMul"):
        return len(node.input) > 1 and node.input[1] in constants
    return True


def _fusible(node: onnx.NodeProto, inside: set[str], head: onnx.NodeProto, constants: set[str]) -> bool:
    """Whether ``node`` joins the fused layer whose tensors so far are ``inside``: a pointwise op
    reading at least one of them and otherwise only constants (ModelOpt's "cask fusible" test)."""
    op = node.op_type
    live = [i for i in node.input if i and i not in constants]
    if not live or any(i not in inside for i in live):
        return False
    if op in NORMALIZATION:
        return head.op_type in NORMALIZED_HEADS and live == [node.input[0]]
    return op in ACTIVATIONS or op in CONSTANT_ELEMENTWISE


def _subgraph_reads(node: onnx.NodeProto) -> list[str]:
    """Every name read inside ``node``'s subgraphs (If/Loop/Scan bodies, nested), outer or not."""
    out: list[str] = []
    for a in node.attribute:
        for sub in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
            for n in sub.node:
                out += list(n.input) + _subgraph_reads(n)
    return out


def fused_internal(model: onnx.ModelProto) -> dict[str, str]:
    """{tensor: why} for the tensors inside a fused layer (main graph only), in graph order.

    A layer grows from its head through the pointwise ops whose non-constant inputs all come
    from the layer (Conv -> BatchNormalization -> Relu; Conv -> Sigmoid -> Mul(conv, sigmoid);
    the decomposed hard-swish x * Clip(x + 3) / 6); its tensors read only inside it are internal."""
    g = model.graph
    nodes = list(g.node)
    constants = _constants(g)
    outputs = {o.name for o in g.output}
    consumers: dict[str, list[int]] = {}
    for k, node in enumerate(nodes):
        for i in dict.fromkeys([*node.input, *_subgraph_reads(node)]):  # an If/Loop body reads outer names too
            if i:
                consumers.setdefault(i, []).append(k)
    taken: set[int] = set()
    found: dict[str, str] = {}
    for h, head in enumerate(nodes):
        if h in taken or not _is_head(head, constants) or not head.output:
            continue
        members = {h}
        inside = {o for o in head.output if o}
        pending = sorted({c for o in inside for c in consumers.get(o, [])})
        while pending:
            k = pending.pop(0)  # graph order: a node's inputs from the layer are in by now
            if k in taken or k in members or not _fusible(nodes[k], inside, head, constants):
                continue
            members.add(k)
            new = [o for o in nodes[k].output if o]
            inside.update(new)
            pending = sorted(set(pending) | {c for o in new for c in consumers.get(o, []) if c not in members})
        taken.update(members)
        where = head.name or head.output[0]
        for k in sorted(members):
            for t in nodes[k].output:
                readers = consumers.get(t, [])
                if t and t not in outputs and readers and all(r in members for r in readers):
                    ops = ", ".join(dict.fromkeys(nodes[r].op_type for r in readers))
                    found[t] = f"inside the fused {head.op_type} layer {where!r} ({nodes[k].op_type} -> {ops})"
    return {t: found[t] for n in nodes for t in n.output if t in found}


TENSOR_SELECTIONS = ("trt", "qdq", "all")


def qdq_inputs(model: onnx.ModelProto) -> list[str]:
    """The activations the ``trt`` Q/DQ placement quantizes, as the exporter finds them
    (calibkit/qdq/export.py's inputs of the quantized op types, plus the skip inputs of
    residual joins from calibkit/qdq/post.py), on the same prepared copy the exporter uses."""
    from calibkit.graph.forms import fold_constant_nodes
    from calibkit.qdq.export import needed_activations
    from calibkit.qdq.placement import quantized_ops
    from calibkit.qdq.post import residual_inputs

    prepared, _ = fold_constant_nodes(model)
    need = needed_activations(prepared, quantized_ops("trt"))
    everything = {n: 1.0 for n in (o for node in prepared.graph.node for o in node.output)}
    everything.update({i.name: 1.0 for i in prepared.graph.input})
    skips = residual_inputs(prepared, everything)
    return list(dict.fromkeys([*need, *skips.values()]))


def select(model: onnx.ModelProto, names: list[str], mode: str) -> tuple[list[str], dict[str, str]]:
    """(the ``names`` to calibrate under ``mode``, {dropped tensor: why}); order kept.

    ``all``: every name. ``trt``: all but the tensors inside TensorRT's fused layers.
    ``qdq``: only the inputs the Q/DQ placement quantizes."""
    if mode == "all":
        return list(names), {}
    if mode == "trt":
        inside = fused_internal(model)
        return [n for n in names if n not in inside], {n: inside[n] for n in names if n in inside}
    if mode == "qdq":
        wanted = set(qdq_inputs(model))
        why = "not an input the Q/DQ placement quantizes (--tensors qdq)"
        return [n for n in names if n in wanted], {n: why for n in names if n not in wanted}
    raise ValueError(f"tensor selection {mode!r} must be one of {', '.join(TENSOR_SELECTIONS)}")
