"""Graph forms for the Q/DQ export tests: Constant-node weights, old opsets, float16,
external data, a small attention block with token-id input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from calibkit.qdq.export import activation_qdq


def as_constant_nodes(src: Path, dst: Path) -> Path:
    """The same model with every initializer written as a Constant node (Paddle2ONNX style)."""
    m = onnx.load(str(src))
    consts = [helper.make_node("Constant", [], [i.name], value=i, name=f"const_{i.name}") for i in m.graph.initializer]
    nodes = consts + list(m.graph.node)
    del m.graph.initializer[:]
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    onnx.checker.check_model(m)
    onnx.save(m, str(dst))
    return dst


def with_opset(src: Path, dst: Path, opset: int) -> Path:
    m = onnx.load(str(src))
    m.opset_import[0].version = opset
    onnx.checker.check_model(m)
    onnx.save(m, str(dst))
    return dst


def as_float16(src: Path, dst: Path) -> Path:
    """Float16 weights, activations, inputs and outputs."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    m = convert_float_to_float16(onnx.load(str(src)), keep_io_types=False)
    onnx.checker.check_model(m)
    onnx.save(m, str(dst))
    return dst


def with_external_data(src: Path, dst: Path) -> Path:
    m = onnx.load(str(src))
    onnx.save_model(
        m,
        str(dst),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=dst.name + ".data",
        size_threshold=0,
    )
    return dst


def attention_net(path: Path, vocab: int = 50, d: int = 16, seed: int = 0) -> Path:
    """ids int64 [N,T] -> Gather -> LayerNorm -> Q,K,V MatMul -> Q.K^T -> Softmax -> P.V -> MatMul
    -> residual Add -> LayerNorm -> ReduceMean -> Gemm."""
    rng = np.random.default_rng(seed)

    def w(name, *shape, s=0.3):
        return numpy_helper.from_array(rng.normal(0, s, shape).astype(np.float32), name)

    inits = [
        w("emb", vocab, d, s=1.0),
        w("wq", d, d),
        w("bq", d, s=0.1),
        w("wk", d, d),
        w("wv", d, d),
        w("wo", d, d),
        w("wc", d, 3),
        numpy_helper.from_array(np.ones(d, np.float32), "g1"),
        numpy_helper.from_array(np.zeros(d, np.float32), "b1"),
        numpy_helper.from_array(np.ones(d, np.float32), "g2"),
        numpy_helper.from_array(np.zeros(d, np.float32), "b2"),
        numpy_helper.from_array(np.array(1 / np.sqrt(d), np.float32), "inv_sqrt_d"),
    ]
    n = helper.make_node
    nodes = [
        n("Gather", ["emb", "ids"], ["x"], name="embed"),
        n("LayerNormalization", ["x", "g1", "b1"], ["ln1"], axis=-1, name="ln1"),
        n("MatMul", ["ln1", "wq"], ["q0"], name="q_proj"),
        n("Add", ["q0", "bq"], ["q"], name="q_bias"),
        n("MatMul", ["ln1", "wk"], ["k"], name="k_proj"),
        n("MatMul", ["ln1", "wv"], ["v"], name="v_proj"),
        n("Transpose", ["k"], ["kt"], perm=[0, 2, 1], name="k_t"),
        n("MatMul", ["q", "kt"], ["scores"], name="qk"),
        n("Mul", ["scores", "inv_sqrt_d"], ["scaled"], name="scale"),
        n("Softmax", ["scaled"], ["probs"], axis=-1, name="softmax"),
        n("MatMul", ["probs", "v"], ["ctx"], name="pv"),
        n("MatMul", ["ctx", "wo"], ["attn"], name="o_proj"),
        n("Add", ["attn", "x"], ["res"], name="residual"),
        n("LayerNormalization", ["res", "g2", "b2"], ["ln2"], axis=-1, name="ln2"),
        n("ReduceMean", ["ln2"], ["pooled"], axes=[1], keepdims=0, name="pool"),
        n("Gemm", ["pooled", "wc"], ["logits"], name="classifier"),
    ]
    graph = helper.make_graph(
        nodes,
        "attention",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", "T"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def producers(m: onnx.ModelProto) -> dict[str, str]:
    return {o: n.op_type for n in m.graph.node for o in n.output}


def check_trt_placement(model: onnx.ModelProto, q: onnx.ModelProto, scales: dict[str, float]) -> dict[str, int]:
    """Assertions shared with the corpus test; returns counts by kind."""
    inits = {i.name for i in model.graph.initializer} | {
        o for n in model.graph.node if n.op_type == "Constant" for o in n.output
    }
    prod = producers(q)
    counts = {"act_matmul": 0}
    original = {n.name: n for n in model.graph.node}
    for n in q.graph.node:
        src = original.get(n.name)
        if n.op_type == "MatMul" and src is not None and not any(i in inits for i in src.input):
            counts["act_matmul"] += 1
            assert all(prod.get(i) == "DequantizeLinear" for i in n.input), (
                f"MatMul {n.name} between activations: both inputs quantized"
            )
        if n.op_type in ("Softmax", "LayerNormalization"):
            assert prod.get(n.input[0]) != "DequantizeLinear", f"{n.op_type} {n.name} input stays float"
    for tensor, (_, scale) in activation_qdq(q).items():
        assert np.float32(scale) == np.float32(scales[tensor]), tensor  # bit for bit
    return counts
