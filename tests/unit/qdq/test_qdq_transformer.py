"""TensorRT placement on an attention block: MatMul between activations gets both inputs
quantized, weighted MatMul/Gemm per-channel weights, LayerNorm/Softmax/residual Add stay
float (Softmax output quantized only as a MatMul input), token ids get no scale."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import qdq_models
from qdq_models import check_trt_placement, producers

from calibkit.artifacts import scales as scales_io
from calibkit.calibration import calibrate
from calibkit.qdq.export import activation_qdq, export_qdq


@pytest.fixture
def attention(tmp_path):
    path = qdq_models.attention_net(tmp_path / "attn.onnx")
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 50, (24, 6)).astype(np.int64)
    np.savez(tmp_path / "ids.npz", ids=ids)
    calibrate(path, tmp_path / "ids.npz", output_dir=tmp_path / "cal", method="minmax")
    return path, ids, scales_io.read(tmp_path / "cal" / "scales.json")


def test_attention_block_trt_placement(attention, tmp_path):
    path, ids, table = attention
    assert "ids" not in table.tensors  # token ids (int64) get no scale
    model = onnx.load(str(path))
    q = onnx.load(str(export_qdq(path, table.amax(), tmp_path / "q.onnx")))
    counts = check_trt_placement(model, q, {t: v["scale"] for t, v in table.tensors.items()})
    assert counts["act_matmul"] == 2  # Q.K^T and P.V
    acts = set(activation_qdq(q))
    assert acts == {"ln1", "q", "kt", "probs", "v", "ctx", "pooled"}
    assert "scaled" not in acts and "ln2" not in acts  # Softmax / LayerNorm inputs stay float
    prod = producers(q)
    by_name = {n.name: n for n in q.graph.node}
    assert all(prod.get(i) != "DequantizeLinear" for i in by_name["residual"].input)  # transformer residual stays float
    assert by_name["residual"].input[1] == "x" and by_name["q_bias"].input[0] == "q0"
    # weighted MatMul / Gemm: per-channel INT8 weights along the output features
    inits = {i.name: i for i in q.graph.initializer}
    for w, out in (("wq", 16), ("wo", 16), ("wc", 3)):
        assert list(inits[f"{w}_scale"].dims) == [out]
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"ids": ids})[0]
    got = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"]).run(None, {"ids": ids})[0]
    cos = float((ref * got).sum() / np.linalg.norm(ref) / np.linalg.norm(got))
    assert cos > 0.99


def test_float_consumers_read_float(attention, tmp_path):
    """A tensor feeding a quantized MatMul and a float op: the float op reads the float tensor
    (TensorRT placement), while the ORT placement keeps ORT's shared dequantized copy."""
    path, ids, table = attention
    q = onnx.load(str(export_qdq(path, table.amax(), tmp_path / "q.onnx")))
    by_name = {n.name: n for n in q.graph.node}
    assert by_name["k_t"].input[0] == "k"  # Transpose is not quantized
    assert by_name["pv"].input[1].endswith("DequantizeLinear_Output")


def test_conv_residual_add_quantizes_the_skip_input(tmp_path):
    """Conv + Add join: the skip input gets its own Q/DQ pair (TensorRT's Conv+Add fusion),
    the Conv output stays float; the ORT placement does not add it."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).normal(0, 0.3, (3, 3, 3, 3)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Sigmoid", ["x"], ["s"], name="gate"),
        helper.make_node("Add", ["c", "s"], ["y"], name="join"),
    ]
    g = helper.make_graph(
        nodes,
        "res",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 4, 4])],
        [w],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(tmp_path / "res.onnx"))
    np.savez(tmp_path / "x.npz", x=np.random.default_rng(1).normal(0, 1, (8, 3, 4, 4)).astype(np.float32))
    calibrate(tmp_path / "res.onnx", tmp_path / "x.npz", output_dir=tmp_path / "cal", method="minmax")
    table = scales_io.read(tmp_path / "cal" / "scales.json")
    notes: list[str] = []
    q = onnx.load(str(export_qdq(tmp_path / "res.onnx", table.amax(), tmp_path / "q.onnx", notes=notes)))
    assert any("residual Add" in n for n in notes)
    join = next(n for n in q.graph.node if n.name == "join")
    prod = producers(q)
    assert join.input[0] == "c" and prod[join.input[1]] == "DequantizeLinear"
    assert np.float32(activation_qdq(q)["s"][1]) == np.float32(table.tensors["s"]["scale"])
    q_ort = onnx.load(str(export_qdq(tmp_path / "res.onnx", table.amax(), tmp_path / "o.onnx", placement="ort")))
    assert "s_residual_QuantizeLinear" not in {n.name for n in q_ort.graph.node}
