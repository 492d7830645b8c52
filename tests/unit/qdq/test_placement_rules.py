"""trt-fused placement: shared Concat scale, no Q/DQ on constants, pooling, small-channel and
GEMV exclusions; trt-min is today's trt placement byte for byte."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from calibkit.qdq.export import export_qdq
from calibkit.qdq.placement import FUSED_RULES
from calibkit.sessions import session


def fused_net(path, seed: int = 0):
    """x[N,16,8,8] -> conv a, conv b -> Concat -> MaxPool -> conv c (+ bias through Reshape) ->
    Add(residual, x) ; conv s (16 -> 4 channels) ; Flatten -> Gemm (N=2, a GEMM with small N)."""
    rng = np.random.default_rng(seed)

    def w(name, *shape):
        return numpy_helper.from_array(rng.normal(0, 0.2, shape).astype(np.float32), name)

    inits = [
        w("wa", 16, 16, 3, 3),
        w("wb", 16, 16, 3, 3),
        w("wc", 16, 32, 1, 1),
        w("ws", 4, 16, 1, 1),
        w("wg", 2, 64),
        w("bias", 16),
        numpy_helper.from_array(np.array([1, 16, 1, 1], np.int64), "bshape"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["a"], pads=[1, 1, 1, 1], name="conv_a"),
        helper.make_node("Conv", ["x", "wb"], ["b"], pads=[1, 1, 1, 1], name="conv_b"),
        helper.make_node("Concat", ["a", "b"], ["cat"], axis=1, name="concat"),
        helper.make_node("MaxPool", ["cat"], ["pool"], kernel_shape=[1, 1], name="pool"),
        helper.make_node("Conv", ["pool", "wc"], ["c"], name="conv_c"),
        helper.make_node("Reshape", ["bias", "bshape"], ["rbias"], name="reshape_bias"),
        helper.make_node("Add", ["c", "rbias"], ["cb"], name="add_bias"),
        helper.make_node("Add", ["cb", "x"], ["res"], name="add_res"),
        helper.make_node("Conv", ["res", "ws"], ["s"], name="conv_small"),
        helper.make_node("Flatten", ["s"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "wg"], ["y"], transB=1, name="gemm"),
    ]
    g = helper.make_graph(
        nodes,
        "fused",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
        inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(m, str(path))
    return path


def _amax(model_path, shape=(8, 16, 4, 4)):
    """Each activation's true max |x| on random data (distinct per tensor)."""
    m = onnx.load(str(model_path))
    names = [o for n in m.graph.node for o in n.output]
    from calibkit.graph.model import with_outputs

    x = np.random.default_rng(1).normal(0, 1, shape).astype(np.float32)
    sess = session(with_outputs(m, names), device="cpu")
    outs = sess.run(names, {"x": x})
    return {"x": float(np.abs(x).max()), **{n: float(np.abs(v).max()) for n, v in zip(names, outs)}}, x


def _q_scales(q):
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    return {n.input[0]: float(inits[n.input[1]]) for n in q.graph.node if n.op_type == "QuantizeLinear"}


@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_trt_fused_rules(tmp_path, precision):
    path = fused_net(tmp_path / "f.onnx")
    amax, x = _amax(path)
    out = export_qdq(path, amax, tmp_path / "q.onnx", placement="trt-fused", precision=precision)
    q = onnx.load(str(out))
    scales = _q_scales(q)
    qmax = 127 if precision == "int8" else 448
    # Concat: both inputs and the output share one scale, the output's (exactly)
    shared = np.float32(amax["cat"]) / np.float32(qmax)
    assert scales["a"] == scales["b"] == scales["cat"] == float(shared)
    assert amax["a"] != amax["b"]  # the test would pass trivially otherwise
    # pooling next to a quantized conv: its input is quantized; the conv reads the pooled tensor
    assert "pool" in scales
    # never a Q/DQ on a constant: the bias through Reshape is not quantized, the real skip is
    assert "rbias" not in scales and "x" in scales
    add_res = next(n for n in q.graph.node if n.name == "add_res")
    prod = {o: n for n in q.graph.node for o in n.output}
    assert prod[add_res.input[1]].op_type == "DequantizeLinear"
    # 16 -> 4 channels (not a multiple of 8): float; Gemm with N = 2: float
    assert "res" not in scales and "flat" not in scales
    ref = session(onnx.load(str(path)), device="cpu").run(None, {"x": x})[0]
    got = session(q, device="cpu", exact_qdq=True).run(None, {"x": x})[0]
    assert float(ref.ravel() @ got.ravel() / (np.linalg.norm(ref) * np.linalg.norm(got))) > 0.99


def test_no_placement_quantizes_the_constant_bias_and_trt_min_is_trt(tmp_path):
    path = fused_net(tmp_path / "f.onnx")
    amax, _ = _amax(path)
    a = export_qdq(path, amax, tmp_path / "trt.onnx", placement="trt")
    b = export_qdq(path, amax, tmp_path / "min.onnx", placement="trt-min")
    assert a.read_bytes() == b.read_bytes()
    assert "rbias" not in _q_scales(onnx.load(str(a)))  # a bias through Reshape: TensorRT folds it
    assert "rbias" not in _q_scales(
        onnx.load(str(export_qdq(path, amax, tmp_path / "fused.onnx", placement="trt-fused")))
    )


def test_every_rule_cites_a_source():
    names = [r["rule"] for r in FUSED_RULES]
    assert len(names) == len(set(names))
    assert all(r["source"] and r["action"] for r in FUSED_RULES)


def attention_net(path, seq: int, dim: int = 64):
    """x[1, seq, dim] -> q, k, v projections -> softmax(q k^T / 8) v -> output projection."""
    rng = np.random.default_rng(3)
    w = {n: numpy_helper.from_array(rng.normal(0, dim**-0.5, (dim, dim)).astype(np.float32), n) for n in "qkvo"}
    inits = [*w.values(), numpy_helper.from_array(np.array(8.0, np.float32), "scale")]
    nodes = [
        helper.make_node("MatMul", ["x", "q"], ["xq"], name="proj_q"),
        helper.make_node("MatMul", ["x", "k"], ["xk"], name="proj_k"),
        helper.make_node("MatMul", ["x", "v"], ["xv"], name="proj_v"),
        helper.make_node("Transpose", ["xk"], ["kt"], perm=[0, 2, 1], name="kt"),
        helper.make_node("MatMul", ["xq", "kt"], ["scores"], name="bmm1"),
        helper.make_node("Div", ["scores", "scale"], ["scaled"], name="div"),
        helper.make_node("Softmax", ["scaled"], ["probs"], axis=-1, name="softmax"),
        helper.make_node("MatMul", ["probs", "xv"], ["ctx"], name="bmm2"),
        helper.make_node("MatMul", ["ctx", "o"], ["y"], name="proj_o"),
    ]
    g = helper.make_graph(
        nodes,
        "attention",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, seq, dim])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, seq, dim])],
        inits,
    )
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), path)
    return path


def _quantized_matmuls(path):
    q = onnx.load(str(path))
    dq = {n.output[0] for n in q.graph.node if n.op_type == "DequantizeLinear"}
    return {n.name for n in q.graph.node if n.op_type == "MatMul" and all(i in dq for i in n.input)}


def test_attention_cores_follow_modelopts_sequence_and_head_limits(tmp_path):
    from calibkit.qdq.rules import decide

    short = attention_net(tmp_path / "short.onnx", seq=16)
    long = attention_net(tmp_path / "long.onnx", seq=600)
    for path, int8_core, seq in ((short, True, 16), (long, False, 600)):
        amax, _ = _amax(path, (1, seq, 64))
        got = _quantized_matmuls(export_qdq(path, amax, tmp_path / f"{path.stem}.int8.onnx", placement="trt-fused"))
        assert {"proj_q", "proj_k", "proj_v", "proj_o"} <= got  # the projections: ordinary GEMMs
        assert ({"bmm1", "bmm2"} <= got) == int8_core and (not ({"bmm1", "bmm2"} & got)) == (not int8_core)
        d = decide(onnx.load(str(path)))
        assert d["bmm1"].rule == ("compute-input" if int8_core else "attention"), d["bmm1"]
        if not int8_core:
            assert "sequence length 600 > 512" in d["bmm1"].why and d["bmm2"].rule == "attention"
        # trt (the default) keeps every MatMul quantized: the rule is trt-fused's
        assert {"bmm1", "bmm2"} <= _quantized_matmuls(export_qdq(path, amax, tmp_path / f"{path.stem}.trt.onnx"))
    # FP8: head size 64 is in (8, 256]: the long core is quantized; a head of 4 is not
    amax, _ = _amax(long, (1, 600, 64))
    got = _quantized_matmuls(export_qdq(long, amax, tmp_path / "long.fp8.onnx", placement="trt-fused", precision="fp8"))
    assert {"bmm1", "bmm2"} <= got
    tiny = attention_net(tmp_path / "tiny.onnx", seq=16, dim=4)
    d = decide(onnx.load(str(tiny)), precision="fp8")
    assert d["bmm1"].rule == "attention" and "head size 4" in d["bmm1"].why
    assert decide(onnx.load(str(tiny)))["bmm1"].rule != "attention"  # INT8: seq 16 is fine
