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
# ``trt`` is today's placement (compute inputs + residual skip); ``trt-min`` names it
# explicitly (byte-identical output); ``trt-fused`` adds the rules of FUSED_RULES below.
PLACEMENTS = ("trt", "trt-min", "trt-fused", "ort")
TRT_PLACEMENTS = ("trt", "trt-min", "trt-fused")

RESIDUAL_JOIN = "Add"
# Attention cores (the "attention" rule below): what may sit between the two MatMuls.
ATTENTION_INT8_MAX_SEQ = 512
ATTENTION_FP8_HEAD = (8, 256)
ATTENTION_BETWEEN = ("Div", "Mul", "Add", "Sub", "Where", "Cast", "Dropout")
SMALL_CHANNELS = 16  # ModelOpt's channel / K / N floor for INT8 and FP8 GEMMs and convolutions
CHANNEL_MULTIPLE = 8  # ... unless the channel count is a multiple of this (tensor-core friendly)

# ``trt-fused``: TensorRT's fusion rules as data, each with its source. ``ops``: op types the
# rule concerns; ``action``: what the placement does. calibkit/qdq/rules.py applies them and
# ``calibkit placement`` reports, per node, which one decided.
FUSED_RULES = (
    {
        "rule": "compute-input",
        "ops": COMPUTE_OPS,
        "action": "quantize the activation inputs, per-channel weights, output left to the next layer",
        "source": "TensorRT developer guide, Explicit Quantization: Q/DQ layer-placement recommendations",
    },
    {
        "rule": "pooling-next-to-quantized",
        "ops": ("MaxPool", "AveragePool", "GlobalAveragePool"),
        "action": "quantize the input when the pooling's output feeds a quantized op (INT8 pooling, no reformat)",
        "source": "ModelOpt onnx/quantization/graph_utils.py (quantizable pooling beside quantized ops); "
        "TensorRT developer guide, Explicit Quantization (pooling commutes with Q/DQ)",
    },
    {
        "rule": "resize-next-to-quantized",
        "ops": ("Resize",),
        "action": "quantize the input when the Resize's output feeds a quantized op (an FPN's upsampling "
        "between Conv groups runs in INT8/FP8)",
        "source": "ModelOpt onnx/quantization/graph_utils.py (Resize among the ops quantized next to a "
        "quantized Conv group); TensorRT developer guide, Explicit Quantization (Resize commutes with Q/DQ)",
    },
    {
        "rule": "concat-shared-scale",
        "ops": ("Concat",),
        "action": "quantize every input with one scale: the Concat output's (its histogram is the exact merge "
        "of the inputs'), so TensorRT eliminates the Concat instead of requantizing",
        "source": "ModelOpt onnx/quantization/qdq_utils.py concat_elimination; NVIDIA/TensorRT#3197",
    },
    {
        "rule": "residual-add",
        "ops": (RESIDUAL_JOIN,),
        "action": "quantize the skip input of a Conv(+BN) + Add join, never the Conv side",
        "source": "TensorRT developer guide, Explicit Quantization (Conv + elementwise-sum fusion); "
        "NVIDIA/TensorRT#4366, #3861",
    },
    {
        "rule": "no-constant",
        "ops": (),
        "action": "never a Q/DQ on a tensor computed from constants only (e.g. a bias through Reshape): "
        "TensorRT folds it into the layer",
        "source": "TensorRT developer guide, Explicit Quantization (weights are quantized by DQ on the "
        "constant; activations only by Q/DQ pairs); ModelOpt skips non-activation inputs",
    },
    {
        "rule": "no-island",
        "ops": COMPUTE_OPS,
        "action": "keep in float a layer the other rules leave quantized between float layers only (its "
        "Q/DQ reformats cost more than INT8/FP8 saves)",
        "source": "TensorRT developer guide, Explicit Quantization (Q/DQ placement: quantize whole "
        "regions; reformatting between precisions is not free); NVIDIA/TensorRT#3197",
    },
    {
        "rule": "small-channels",
        "ops": ("Conv", "ConvTranspose"),
        "action": f"keep in float a convolution with fewer than {SMALL_CHANNELS} input or output "
        f"channels unless a multiple of {CHANNEL_MULTIPLE}",
        "source": "ModelOpt onnx/quantization/graph_utils.py (find_nodes_from_convs_to_exclude: channels < 16)",
    },
    {
        "rule": "attention",
        "ops": ("MatMul",),
        "action": f"keep in float both MatMuls of an attention core (MatMul -> scale/mask -> Softmax -> "
        f"MatMul, both operands activations) whose sequence length exceeds {ATTENTION_INT8_MAX_SEQ} in INT8, "
        f"or whose head size is outside ({ATTENTION_FP8_HEAD[0]}, {ATTENTION_FP8_HEAD[1]}] in FP8 (known "
        "from static shapes; unknown: quantized)",
        "source": "ModelOpt onnx/quantization/graph_utils.py (find_mha_partitions, "
        "find_nodes_from_mha_to_exclude: INT8 seq_len > 512, FP8 head_size > 256 or <= 8)",
    },
    {
        "rule": "gemv",
        "ops": ("Gemm", "MatMul"),
        "action": f"keep in float a GEMV (M == 1, known from a static shape) and a GEMM with K or N < {SMALL_CHANNELS}",
        "source": "ModelOpt onnx/quantization/graph_utils.py (find_nodes_from_mha_to_exclude / "
        "_exclude_matmuls_by_shape: GEMV and small K, N)",
    },
)
RULE_OF = {r["rule"]: r for r in FUSED_RULES}
FUSED_POOLING = RULE_OF["pooling-next-to-quantized"]["ops"]
FUSED_RESIZE = RULE_OF["resize-next-to-quantized"]["ops"]
# ops whose first input is quantized when their output feeds a quantized op (outputs stay float)
FUSED_NEIGHBOURS = FUSED_POOLING + FUSED_RESIZE

# Residual joins (TensorRT fuses Conv (+BatchNorm) + Add (+ReLU)): the Add's input that does
# not come from a weighted layer (the skip branch) is quantized; ops it looks through.
RESIDUAL_WEIGHTED = ("Conv", "ConvTranspose")
RESIDUAL_PASS_THROUGH = ("BatchNormalization",)
CONSTANT_ELEMENTWISE = ("Add", "Sub", "Mul", "Div")  # as calibkit/qdq/fusion.py (TensorRT folds them)


def quantized_ops(placement: str, skip_types=()) -> list[str]:
    """The op types that get Q/DQ under ``placement``, less ``skip_types``."""
    extra = ORT_EXTRA_OPS if placement == "ort" else FUSED_NEIGHBOURS + ("Concat",) if placement == "trt-fused" else ()
    return [o for o in COMPUTE_OPS + extra if o not in set(skip_types)]


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


def weighted_source(
    name: str, producers: dict[str, onnx.NodeProto], skipped=frozenset(), constants=frozenset()
) -> onnx.NodeProto | None:
    """The weighted layer ``name`` comes from, looking through the pass-through ops (None when
    it does not come from one, or that layer is kept in float). With ``constants``, also
    through an elementwise op with a constant operand (a bias or scale TensorRT folds into the
    layer: calibkit/qdq/fusion.py's CONSTANT_ELEMENTWISE)."""
    node = producers.get(name)
    while node is not None:
        if node.op_type in RESIDUAL_PASS_THROUGH:
            node = producers.get(node.input[0])
        elif constants and node.op_type in CONSTANT_ELEMENTWISE and len(node.input) == 2:
            a, b = node.input
            if (a in constants) == (b in constants):
                break
            node = producers.get(b if a in constants else a)
        else:
            break
    return node if node is not None and node.op_type in RESIDUAL_WEIGHTED and node.name not in skipped else None
