"""Where Q/DQ goes: the one statement of the placement rules, as data.

Used by the Q/DQ export (ONNX Runtime's quantizer is told these op types), by the exporter of
If/Loop/Scan bodies, by the residual-Add pass and by sensitivity's switchable model, so a
rule changed here changes all of them.

Sources: TensorRT's developer guide, "Explicit Quantization" (Q/DQ placement recommendations:
quantize the inputs of weighted layers, let TensorRT fuse the output side; Conv + residual Add
fusion with the Add's other input quantized), and ONNX Runtime's QDQ quantizer for the ``ort``
placement (real INT8 kernels on the CPU provider need Q/DQ around their outputs too).
"""

from __future__ import annotations

import onnx

# Weighted ("compute") layers: their float activation inputs get Q/DQ, their weights
# per-channel Q/DQ, their outputs none (TensorRT fuses the output side into the next layer).
COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")

# Which inputs of a compute op are activations a Q/DQ pair may sit on (the rest are weights or
# bias): Conv/ConvTranspose/Gemm read one activation; MatMul either operand (attention's
# activation x activation products quantize both).
ACTIVATION_INPUTS = {"Conv": (0,), "ConvTranspose": (0,), "Gemm": (0,), "MatMul": (0, 1)}

# The per-channel axis of a weight (ONNX Runtime's defaults): Conv's output channels are axis 0,
# ConvTranspose's axis 1; Gemm's depends on transB; MatMul's weight [K, N] is axis 1.
WEIGHT_AXIS = {"Conv": 0, "ConvTranspose": 1, "MatMul": 1}

# ``ort`` placement only: op types ONNX Runtime has QLinear kernels for on the CPU provider.
ORT_EXTRA_OPS = ("Add", "Mul", "MaxPool", "AveragePool", "GlobalAveragePool", "Relu", "Concat")
PLACEMENTS = ("trt", "ort")

# Residual joins (TensorRT fuses Conv (+BatchNorm) + Add (+ReLU)): the Add's input that does
# not come from a weighted layer (the skip branch) is quantized; ops it looks through.
RESIDUAL_JOIN = "Add"
RESIDUAL_WEIGHTED = ("Conv", "ConvTranspose")
RESIDUAL_PASS_THROUGH = ("BatchNormalization",)


def quantized_ops(placement: str, skip_types=()) -> list[str]:
    """The op types that get Q/DQ under ``placement`` (``trt`` or ``ort``), less ``skip_types``."""
    return [o for o in COMPUTE_OPS + (ORT_EXTRA_OPS if placement == "ort" else ()) if o not in set(skip_types)]


def activation_inputs(node: onnx.NodeProto) -> list[str]:
    """The inputs of a quantized node that are activation slots (possibly constants); an
    ``ort``-placement op's first two."""
    return [node.input[i] for i in ACTIVATION_INPUTS.get(node.op_type, (0, 1)) if i < len(node.input) and node.input[i]]


def weight_axis(node: onnx.NodeProto) -> int:
    """Per-channel axis of the weight input (input 1) of a compute node."""
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return WEIGHT_AXIS[node.op_type]


def weighted_source(name: str, producers: dict[str, onnx.NodeProto], skipped=frozenset()) -> onnx.NodeProto | None:
    """The weighted layer ``name`` comes from, looking through the pass-through ops (None when
    it does not come from one, or that layer is kept in float)."""
    node = producers.get(name)
    while node is not None and node.op_type in RESIDUAL_PASS_THROUGH:
        node = producers.get(node.input[0])
    return node if node is not None and node.op_type in RESIDUAL_WEIGHTED and node.name not in skipped else None
