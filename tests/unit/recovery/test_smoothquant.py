"""SmoothQuant (calibkit.recovery.smoothquant): which activations are targets, the FP32 function
is unchanged through ONNX Runtime, outlier channels are flattened and per-tensor INT8 error drops."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from calibkit.errors import CalibkitError
from calibkit.graph.model import with_outputs
from calibkit.recovery.smoothquant import ChannelMax, ineligible, smooth, smoothed_max, targets

MODELS = Path(os.environ.get("CALIBKIT_CORPUS", Path.home() / ".cache" / "calibkit-corpus")) / "models"
K = 16


def _vi(name: str, rank: int) -> onnx.ValueInfoProto:
    dtype = TensorProto.INT64 if name == "shape" else TensorProto.FLOAT
    return helper.make_tensor_value_info(name, dtype, [f"{name}_{k}" for k in range(rank)])


def _model(nodes, inputs: dict[str, int], outputs: dict[str, int], inits, opset: int = 17) -> onnx.ModelProto:
    """A model from nodes; ``inputs``/``outputs``: name -> rank (dims symbolic)."""
    graph = helper.make_graph(
        nodes,
        "g",
        [_vi(n, r) for n, r in inputs.items()],
        [_vi(n, r) for n, r in outputs.items()],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def _run(model: onnx.ModelProto, feed: dict, names=()) -> dict[str, np.ndarray]:
    m = with_outputs(model, list(names)) if names else model
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed)))


def _act_max(model, feed, found) -> dict[str, np.ndarray]:
    outs = _run(model, feed, list(found))
    maxima = {}
    for name, t in found.items():
        cm = ChannelMax(t.axis)
        cm.update(outs[name])
        maxima[name] = cm.value
    return maxima


def _same(a: dict, b: dict) -> None:
    for name, v in a.items():
        np.testing.assert_allclose(b[name], v, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(v).max())), err_msg=name)


def _init(model, name) -> np.ndarray:
    return numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name))


def _weight(model, node_name) -> np.ndarray:
    node = next(n for n in model.graph.node if n.name == node_name)
    return _init(model, node.input[1])


def _int8_error(x: np.ndarray, w: np.ndarray) -> float:
    """Relative error of x @ w with x per-tensor INT8 (amax = max|x|) and w per-column INT8."""
    sx = np.abs(x).max() / 127
    qx = np.clip(np.round(x / sx), -127, 127) * sx
    sw = np.abs(w).max(axis=0, keepdims=True) / 127
    ref = x.astype(np.float64) @ w
    return float(np.linalg.norm(qx @ (np.round(w / sw) * sw) - ref) / np.linalg.norm(ref))


def _ln_matmul() -> onnx.ModelProto:
    """x -> LayerNormalization (gamma 40 and -60 on channels 3 and 11) -> h -> MatMul -> y."""
    rng = np.random.default_rng(0)
    gamma = rng.uniform(0.5, 1.5, K)
    gamma[3], gamma[11] = 40.0, -60.0
    inits = {"gamma": gamma, "beta": rng.normal(0, 0.1, K), "w": rng.normal(0, 0.3, (K, 8))}
    nodes = [
        helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["h"], name="ln", axis=-1),
        helper.make_node("MatMul", ["h", "w"], ["y"], name="mm"),
    ]
    return _model(nodes, {"x": 3}, {"y": 3}, inits)


def _feed(shape=(4, 10, K), outliers=None) -> dict[str, np.ndarray]:
    x = np.random.default_rng(1).normal(0, 1, shape).astype(np.float32)
    for ch, f in (outliers or {}).items():
        x[..., ch] *= f
    return {"x": x}


def test_layernorm_matmul_outliers_flattened_and_int8_error_drops():
    model = _ln_matmul()
    before_bytes = model.SerializeToString()
    found = targets(model)
    assert list(found) == ["h"]
    t = found["h"]
    assert (t.kind, t.producer, t.consumers, t.axis, t.channels) == ("LayerNormalization", "ln", ("mm",), -1, K)
    feed = _feed()
    amax = _act_max(model, feed, found)
    smoothed, records = smooth(model, amax, alpha=0.5)
    assert model.SerializeToString() == before_bytes  # the input model is untouched
    _same(_run(model, feed), _run(smoothed, feed))
    (rec,) = records
    json.dumps(records)
    assert rec["tensor"] == "h" and rec["consumers"] == ["mm"] and rec["producer"] == "ln" and rec["alpha"] == 0.5
    assert rec["act_range_ratio_before"] > 40  # measured 46.5: channels 3 and 11 are ~50x the median channel
    assert rec["act_range_ratio_after"] < 8  # measured 6.9
    # the smoothed activation is what smoothed_max predicts, and the weight took s
    h0, h1 = _run(model, feed, ["h"])["h"], _run(smoothed, feed, ["h"])["h"]
    w0, w1 = _weight(model, "mm"), _weight(smoothed, "mm")
    s = w1[:, 0].astype(np.float64) / w0[:, 0]
    np.testing.assert_allclose(w1, w0 * s[:, None], rtol=1e-6)
    cm = ChannelMax()
    cm.update(h1)
    np.testing.assert_allclose(cm.value, smoothed_max(amax["h"], s), rtol=1e-4)
    e0, e1 = _int8_error(h0.reshape(-1, K), w0), _int8_error(h1.reshape(-1, K), w1)
    assert e1 < 0.5 * e0, (e0, e1)  # measured 0.0186 -> 0.0057


@pytest.mark.parametrize("tail", ["mul_add", "mul"])
def test_decomposed_layernorm_shared_by_three_matmuls(tail):
    """Paddle2ONNX/PyTorch tail Add(Mul(x, gamma), beta) (gamma a Constant node) feeding Q, K, V
    and a Shape: one s for the tensor, every projection's rows scaled by it."""
    rng = np.random.default_rng(2)
    inits = {f"w{p}": rng.normal(0, 0.2, (K, 8)) for p in "qkv"} | {"beta": rng.normal(0, 0.1, K)}
    gamma = helper.make_tensor("gamma", TensorProto.FLOAT, [K], rng.uniform(0.5, 1.5, K).astype(np.float32).tolist())
    t = "t"
    nodes = [helper.make_node("Constant", [], ["gamma"], name="gamma_const", value=gamma)]
    nodes.append(helper.make_node("Mul", ["x", "gamma"], ["scaled" if tail == "mul_add" else t], name="mul"))
    if tail == "mul_add":
        nodes.append(helper.make_node("Add", ["scaled", "beta"], [t], name="add"))
    nodes += [helper.make_node("MatMul", [t, f"w{p}"], [p], name=f"proj_{p}") for p in "qkv"]
    nodes.append(helper.make_node("Shape", [t], ["shape"], name="shape"))
    if tail == "mul":
        del inits["beta"]
    model = _model(nodes, {"x": 3}, {"q": 3, "k": 3, "v": 3, "shape": 1}, inits)
    found = targets(model)
    assert list(found) == [t]
    assert found[t].consumers == ("proj_q", "proj_k", "proj_v")
    assert found[t].kind == ("Add(Mul)" if tail == "mul_add" else "Mul")
    feed = _feed(outliers={2: 40.0, 9: 25.0})
    amax = _act_max(model, feed, found)
    smoothed, (rec,) = smooth(model, amax, alpha=0.5)
    _same(_run(model, feed), _run(smoothed, feed))
    ratios = [_weight(smoothed, f"proj_{p}") / _weight(model, f"proj_{p}") for p in "qkv"]
    np.testing.assert_allclose(ratios[1], ratios[0], rtol=1e-5)
    np.testing.assert_allclose(ratios[2], ratios[0], rtol=1e-5)
    assert rec["act_range_ratio_before"] > 15 and rec["act_range_ratio_after"] < 5  # measured 19.1 -> 3.9
    assert [n.op_type for n in smoothed.graph.node] == [n.op_type for n in model.graph.node]  # no node added


def test_gemm_trans_b_after_gemm_with_bias():
    """Gemm (outlier output columns) -> h -> Gemm transB=1: the producer's columns and bias take 1/s."""
    rng = np.random.default_rng(3)
    w1 = rng.normal(0, 0.3, (K, K))
    w1[:, 4] *= 40
    w1[:, 13] *= 30
    inits = {"w1": w1, "b1": rng.normal(0, 0.1, K), "b2w": rng.normal(0, 0.3, (8, K)), "c2": rng.normal(0, 0.1, 8)}
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1"),
        helper.make_node("Gemm", ["h", "b2w", "c2"], ["y"], name="fc2", transB=1),
    ]
    model = _model(nodes, {"x": 2}, {"y": 2}, inits)
    found = targets(model)
    assert found["h"].kind == "Gemm" and found["h"].weights[0][2] == -1  # transB=1: K is B's last axis
    feed = _feed((32, K))
    amax = _act_max(model, feed, found)
    smoothed, (rec,) = smooth(model, amax, alpha=0.5)
    _same(_run(model, feed), _run(smoothed, feed))
    assert rec["act_range_ratio_before"] > 40 and rec["act_range_ratio_after"] < 9  # measured 52.8 -> 7.3
    h0, h1 = _run(model, feed, ["h"])["h"], _run(smoothed, feed, ["h"])["h"]
    e0 = _int8_error(h0, _weight(model, "fc2").T)
    e1 = _int8_error(h1, _weight(smoothed, "fc2").T)
    assert e1 < 0.5 * e0, (e0, e1)  # measured 0.0213 -> 0.0064


def test_matmul_bias_and_transposed_conv_producers():
    """MatMul + Add(bias) -> MatMul, and Conv1d -> Transpose -> MatMul (channel-first to last)."""
    rng = np.random.default_rng(4)
    inits = {
        "wa": rng.normal(0, 0.3, (K, K)),
        "ba": rng.normal(0, 0.1, K),
        "wb": rng.normal(0, 0.3, (K, 8)),
        "wc": rng.normal(0, 0.3, (K, 4, 1)),
        "bc": rng.normal(0, 0.1, K),
        "wd": rng.normal(0, 0.3, (K, 8)),
    }
    nodes = [
        helper.make_node("MatMul", ["x", "wa"], ["a0"], name="mm_a"),
        helper.make_node("Add", ["a0", "ba"], ["a"], name="bias_a"),
        helper.make_node("MatMul", ["a", "wb"], ["y"], name="mm_b"),
        helper.make_node("Conv", ["z", "wc", "bc"], ["c"], name="conv"),
        helper.make_node("Transpose", ["c"], ["ct"], name="tr", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["ct", "wd"], ["y2"], name="mm_d"),
    ]
    model = _model(nodes, {"x": 3, "z": 3}, {"y": 3, "y2": 3}, inits)
    found = targets(model)
    assert {k: v.kind for k, v in found.items()} == {"a": "Add(MatMul)", "ct": "Transpose(Conv)"}
    rng = np.random.default_rng(5)
    feed = {"x": rng.normal(0, 1, (3, 7, K)).astype(np.float32), "z": rng.normal(0, 1, (3, 4, 9)).astype(np.float32)}
    feed["x"][..., 5] *= 30
    feed["z"][:, 1] *= 30
    smoothed, records = smooth(model, _act_max(model, feed, found))
    assert len(records) == 2
    _same(_run(model, feed), _run(smoothed, feed))


def _ineligible_model() -> onnx.ModelProto:
    rng = np.random.default_rng(6)
    inits = {f"w{i}": rng.normal(0, 0.3, (K, K)) for i in range(4)} | {"g": np.ones(K), "b": np.zeros(K)}
    nodes = [
        helper.make_node("MatMul", ["x", "w0"], ["m0"], name="from_input"),  # x: a graph input
        helper.make_node("Relu", ["m0"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w1"], ["m1"], name="after_relu"),  # Relu: nothing to fold into
        helper.make_node("LayerNormalization", ["m1", "g", "b"], ["ln"], name="ln"),
        helper.make_node("MatMul", ["ln", "w2"], ["m2"], name="after_ln"),
        helper.make_node("Add", ["m2", "ln"], ["res"], name="residual"),  # ln also read by a residual Add
        helper.make_node("LayerNormalization", ["res", "g", "b"], ["out_ln"], name="ln2"),
        helper.make_node("MatMul", ["out_ln", "w3"], ["y"], name="head"),
    ]
    return _model(nodes, {"x": 2}, {"y": 2, "out_ln": 2}, inits)


def test_ineligible_reasons_and_errors():
    model = _ineligible_model()
    assert targets(model) == {}
    why = ineligible(model)
    assert set(why) == {"x", "r", "ln", "out_ln"}
    assert "graph input" in why["x"]
    assert "Relu" in why["r"]
    assert "Add residual" in why["ln"]
    assert "graph output" in why["out_ln"]
    with pytest.raises(CalibkitError, match="cannot smooth 'ln'.*residual"):
        smooth(model, {"ln": np.ones(K)})
    with pytest.raises(CalibkitError, match="cannot smooth 'nope'"):
        smooth(model, {"nope": np.ones(K)})
    ln_model = _ln_matmul()
    with pytest.raises(CalibkitError, match="16 finite maxima"):
        smooth(ln_model, {"h": np.ones(5)})
    with pytest.raises(CalibkitError, match="16 finite maxima"):
        smooth(ln_model, {"h": np.full(K, np.nan)})
    with pytest.raises(CalibkitError, match="alpha"):
        smooth(ln_model, {"h": np.ones(K)}, alpha=1.5)
    same, records = smooth(ln_model, {})  # nothing asked: nothing changed
    assert records == [] and same.SerializeToString() == ln_model.SerializeToString()


def test_shared_initializers_are_copied():
    """gamma/beta shared with a LayerNorm whose output is a graph output, and the MatMul weight
    shared with a MatMul on another tensor: both keep their values; the target gets copies."""
    rng = np.random.default_rng(7)
    gamma = rng.uniform(0.5, 1.5, K)
    gamma[0] = 50.0
    inits = {"gamma": gamma, "beta": rng.normal(0, 0.1, K), "w": rng.normal(0, 0.3, (K, 8))}
    nodes = [
        helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["h"], name="ln1"),
        helper.make_node("MatMul", ["h", "w"], ["y"], name="mm1"),
        helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["h2"], name="ln2"),
        helper.make_node("MatMul", ["x", "w"], ["y2"], name="mm_x"),
    ]
    model = _model(nodes, {"x": 3}, {"y": 3, "h2": 3, "y2": 3}, inits)
    assert list(targets(model)) == ["h"]
    feed = _feed()
    smoothed, _ = smooth(model, _act_max(model, feed, targets(model)))
    _same(_run(model, feed), _run(smoothed, feed))
    for name in ("gamma", "beta", "w"):
        np.testing.assert_array_equal(_init(smoothed, name), _init(model, name))
    by_name = {n.name: n for n in smoothed.graph.node}
    assert by_name["ln2"].input[1:] == ["gamma", "beta"] and by_name["mm_x"].input[1] == "w"
    assert by_name["ln1"].input[1] != "gamma" and by_name["mm1"].input[1] != "w"


def test_channel_max_is_exact_in_any_split_and_order():
    rng = np.random.default_rng(8)
    a = rng.standard_cauchy((64, 5, 24)).astype(np.float32)
    a[3, 2, 7] = np.nan  # ignored
    whole = ChannelMax()
    whole.update(a)
    expect = np.nanmax(np.abs(a.astype(np.float64)), axis=(0, 1))
    np.testing.assert_array_equal(whole.value, expect)
    assert whole.value.dtype == np.float64
    for trial in range(6):
        cuts = np.sort(rng.choice(np.arange(1, 64), size=trial + 2, replace=False))
        parts = []
        for chunk in np.split(a, cuts):
            cm = ChannelMax()
            cm.update(chunk)
            parts.append(cm)
        order = rng.permutation(len(parts))
        if trial % 2:  # a tree of merges
            while len(parts) > 1:
                parts = [
                    parts[i].merge(parts[i + 1]) if i + 1 < len(parts) else parts[i] for i in range(0, len(parts), 2)
                ]
            merged = parts[0]
        else:
            merged = ChannelMax()
            for i in order:
                merged.merge(parts[i])
        assert merged.value.tobytes() == whole.value.tobytes()
    gemm_t = ChannelMax(axis=-2)  # Gemm transA=1 reads [K, M]
    gemm_t.update(a[0])
    np.testing.assert_array_equal(gemm_t.value, np.abs(a[0].astype(np.float64)).max(axis=1))
    with pytest.raises(CalibkitError, match="seen no values"):
        _ = ChannelMax().value
    with pytest.raises(CalibkitError, match="channels"):
        whole.update(a[..., :3])
    with pytest.raises(CalibkitError, match="cannot reduce"):
        ChannelMax(axis=-2).update(np.ones(4))


def _corpus(model_dir: str) -> Path:
    files = sorted((MODELS / model_dir).glob("*.onnx"))
    if not files:
        pytest.skip(f"{MODELS / model_dir} absent (python tools/corpus.py fetch)")
    return files[0]


def test_minilm_targets_and_fp32_unchanged():
    model = onnx.load(str(_corpus("minilm_l6")))
    found = targets(model)
    # post-LN BERT: every LayerNorm output also feeds a residual Add, so the foldable tensors are
    # the GELU outputs (their trailing Mul by 0.5) feeding each layer's output dense
    assert len(found) == 6 and {t.kind for t in found.values()} == {"Mul"}
    why = ineligible(model)
    assert sum(r.startswith("also read by Add") for r in why.values()) == 12  # LayerNorm outputs (+ residual)
    assert sum(r.startswith("produced by Reshape") for r in why.values()) == 6  # attention context
    rng = np.random.default_rng(9)
    feed = {
        "input_ids": rng.integers(0, 30522, (2, 16)).astype(np.int64),
        "attention_mask": np.ones((2, 16), np.int64),
        "token_type_ids": np.zeros((2, 16), np.int64),
    }
    amax = _act_max(model, feed, found)
    smoothed, records = smooth(model, amax, alpha=0.5)
    assert len(records) == 6
    ref, got = _run(model, feed), _run(smoothed, feed)
    for name, r in ref.items():
        g = got[name].astype(np.float64).ravel()
        cos = float(r.ravel() @ g / np.linalg.norm(r) / np.linalg.norm(g))
        assert cos > 0.9999, (name, cos)


def test_ppocrv4_rec_targets_and_fp32_unchanged():
    model = onnx.load(str(_corpus("ppocrv4_rec")))
    found = targets(model)
    # SVTR blocks: the decomposed LayerNorm tails Add(Mul(x, gamma), beta) (Constant nodes) in front
    # of the qkv and fc1 MatMuls; swish outputs, reshapes and the head's Squeeze are not foldable
    assert len(found) == 4 and {t.kind for t in found.values()} == {"Add(Mul)"}
    feed = {"x": np.random.default_rng(10).uniform(-1, 1, (1, 3, 48, 160)).astype(np.float32)}
    smoothed, records = smooth(model, _act_max(model, feed, found), alpha=0.5)
    assert len(records) == 4
    assert len(smoothed.graph.initializer) == len(model.graph.initializer)  # Constant nodes edited in place
    _same(_run(model, feed), _run(smoothed, feed))
