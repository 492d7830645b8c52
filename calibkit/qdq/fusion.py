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

The rule here is a conservative subset, so it can only keep a tensor TensorRT does not need,
never drop one it does:

- the chain starts at a weighted layer: Conv, ConvTranspose, or Gemm/MatMul whose second input
  is a constant (a fully connected layer);
- a tensor of the chain is internal only if it has exactly one consumer, is not a graph output,
  and that consumer is a BatchNormalization (after Conv/ConvTranspose), a pointwise activation,
  or an Add/Sub/Mul/Div whose other operand is a constant; the chain continues from that
  consumer's output;
- residual joins (an Add of two activations) end the chain: TensorRT's Conv + elementwise-sum
  fusion needs the skip input quantized, and the Q/DQ placement reads the Add's inputs
  (calibkit/qdq/placement.py), so both are kept.

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
# Elementwise ops that fold into the weights/bias when their other operand is a constant.
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


def _joins(consumer: onnx.NodeProto, tensor: str, head: onnx.NodeProto, constants: set[str]) -> bool:
    """Whether ``consumer`` (the one reader of ``tensor``) fuses into the chain started by ``head``."""
    op = consumer.op_type
    if op in NORMALIZATION:
        return head.op_type in NORMALIZED_HEADS and consumer.input[0] == tensor
    if op in ACTIVATIONS:
        return consumer.input[0] == tensor and all(i in constants for i in consumer.input[1:] if i)
    if op in CONSTANT_ELEMENTWISE:
        others = [i for i in consumer.input if i != tensor]
        return len(consumer.input) == 2 and len(others) == 1 and others[0] in constants
    return False


def fused_internal(model: onnx.ModelProto) -> dict[str, str]:
    """{tensor: why} for the tensors inside a fused layer (main graph only), in graph order."""
    g = model.graph
    constants = _constants(g)
    outputs = {o.name for o in g.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in g.node:
        for i in dict.fromkeys(node.input):
            if i:
                consumers.setdefault(i, []).append(node)
    found: dict[str, str] = {}
    for head in g.node:
        if not _is_head(head, constants) or not head.output:
            continue
        node = head
        while node.output:
            t = node.output[0]
            readers = consumers.get(t, [])
            if t in outputs or len(readers) != 1 or not _joins(readers[0], t, head, constants):
                break
            nxt = readers[0]
            where = head.name or head.output[0]
            found[t] = f"inside the fused {head.op_type} layer {where!r} ({node.op_type} -> {nxt.op_type})"
            node = nxt
    return found


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
