"""Weight recovery (calibkit.recovery): adaptive rounding lowers the layer's error, bias
correction removes the mean shift INT8 causes, the exported Q/DQ model carries exactly the
recovered integers, and thresholds by the consumer's error beat auto where a consumer weighs
channels unequally."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from recovery_models import chain

from calibkit.calibration import calibrate
from calibkit.graph.model import with_outputs
from calibkit.qdq.export import export_qdq, name_nodes
from calibkit.recovery import RecoveryOptions, choose_thresholds, recover_weights
from calibkit.recovery.layers import find, patches, positions, weight_matrix
from calibkit.recovery.rounding import adaround, channel_scales, nearest
from calibkit.recovery.stats import Moments, mean_shift, output_error
from calibkit.sessions import session


def _data(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 1, (n, 4, 8, 8)).astype(np.float32)


def _setup(tmp_path: Path, sparse=False):
    path = chain(tmp_path / "m.onnx", sparse=sparse)
    np.savez(tmp_path / "cal.npz", x=_data(64, 1))
    res = calibrate(path, tmp_path / "cal.npz", output_dir=tmp_path / "cal")
    model = name_nodes(onnx.load(str(path)))
    feeds = [{"x": _data(64, 1)[i : i + 16]} for i in range(0, 64, 16)]
    return model, res, feeds


def _cosine(model, amax, x, tmp: Path) -> float:
    ref = session(model).run(None, {"x": x})[0].ravel().astype(np.float64)
    q = onnx.load(str(export_qdq(model, amax, tmp / "q.onnx")))
    got = session(q, exact_qdq=True).run(None, {"x": x})[0].ravel().astype(np.float64)
    return float(ref @ got / np.linalg.norm(ref) / np.linalg.norm(got))


def test_patches_match_the_convolution(tmp_path):
    """im2col rows times the weight matrix give the Conv's own output (grouped, padded)."""
    model, _, feeds = _setup(tmp_path)
    layers, _ = find(model)
    conv2 = next(lay for lay in layers if lay.node == "conv2")
    x = session(with_outputs(model, ["r1", "c2"])).run(["r1", "c2"], feeds[0])
    pick = positions(conv2, x[0].shape, 10**9, 0)
    p = patches(conv2, x[0], pick)  # [G, M, K]
    w = weight_matrix(conv2, numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "w2")))
    y = np.concatenate([p[g] @ w[g].T for g in range(2)], axis=1)  # [M, Cout]
    want = x[1].transpose(0, 2, 3, 1).reshape(-1, 8)
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4)


def test_adaptive_rounding_lowers_the_layer_error():
    rng = np.random.default_rng(0)
    k, r = 72, 16
    x = np.maximum(rng.normal(size=(4096, k)) @ rng.normal(size=(k, k)) / np.sqrt(k), 0).astype(np.float32)
    s = np.abs(x).max() / 127
    xq = np.clip(np.rint(x / s), -127, 127) * s
    m = Moments(1, k)
    m.update(x[None], xq[None].astype(np.float32))
    w = (rng.normal(size=(1, r, k)) * 0.1).astype(np.float32)
    res = adaround(m, w, iterations=500)
    assert not res.kept_nearest
    assert res.error < 0.97 * res.error_nearest  # measured 0.90x on this draw
    sc = channel_scales(w)
    assert np.array_equal(np.abs(res.q).max(axis=2), np.full((1, r), 127.0))  # the scale is kept
    assert np.all(np.abs(res.q - nearest(w, sc)) <= 1)  # floor or ceil, never further
    v = res.q * sc[..., None]
    assert output_error(m, w.astype(np.float64), v).mean() / 1 >= 0


def test_exported_qdq_carries_the_recovered_integers(tmp_path):
    model, res, feeds = _setup(tmp_path)
    rec, doc = recover_weights(model, res.table.amax(), feeds, RecoveryOptions(iterations=200))
    assert set(doc["layers"]) == {"conv1", "conv2", "fc"}
    assert any(r["rounding"] == "adaptive" for r in doc["layers"].values())
    q = onnx.load(str(export_qdq(rec, res.table.amax(), tmp_path / "rec.qdq.onnx")))
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    floats = {i.name: numpy_helper.to_array(i) for i in rec.graph.initializer}
    checked = 0
    for node in q.graph.node:
        ints = inits.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if ints is None or ints.dtype != np.int8 or ints.ndim < 2:
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        shape = [1] * ints.ndim
        shape[axis] = -1
        deq = ints.astype(np.float32) * inits[node.input[1]].reshape(shape)
        src = floats[node.input[0].removesuffix("_quantized")]
        np.testing.assert_allclose(deq, src, rtol=1e-6, atol=0)  # the recovered floats are exactly the integers
        checked += 1
    assert checked == 3


def test_bias_correction_removes_the_mean_shift(tmp_path):
    """With coarse thresholds the INT8 conv1 output's per-channel mean drifts from FP32's; after
    bias correction (nearest rounding) the drift on the calibration data is mostly gone."""
    model, res, feeds = _setup(tmp_path)
    amax = {k: v * 0.35 for k, v in res.table.amax().items()}  # clip hard: a real mean shift
    x = np.concatenate([f["x"] for f in feeds])

    def drift(m):
        ref = session(with_outputs(model, ["c2"])).run(["c2"], {"x": x})[0].mean(axis=(0, 2, 3))
        q = onnx.load(str(export_qdq(m, amax, tmp_path / "d.onnx")))
        got = session(with_outputs(q, ["c2"]), exact_qdq=True).run(["c2"], {"x": x})[0].mean(axis=(0, 2, 3))
        return np.abs(got - ref).mean()

    rec, doc = recover_weights(model, amax, feeds, RecoveryOptions(rounding="nearest"))
    assert doc["layers"]["conv2"]["bias"] == "corrected"
    before, after = drift(model), drift(rec)
    assert after < 0.2 * before, (before, after)


def test_mean_shift_formula():
    m = Moments(1, 2)
    x = np.array([[[1.0, 2.0], [3.0, 4.0]]], dtype=np.float32)
    m.update(x, x * 0.5)
    w = np.array([[[1.0, 1.0]]])
    assert mean_shift(m, w, w)[0, 0] == (1 + 2 + 3 + 4) / 2 - (1 + 2 + 3 + 4) / 4


def test_consumer_thresholds_beat_auto_on_sparse_outliers(tmp_path):
    """conv1's channel 3 is huge at a few positions but conv2 barely reads it: auto keeps the
    range for the outliers, the consumer's error gives resolution to what conv2 reads."""
    model, res, feeds = _setup(tmp_path, sparse=True)
    from calibkit.artifacts.scales import compute

    auto = compute(res.histograms, "auto").amax()
    chosen, why = choose_thresholds(model, res.histograms, res.table.amax(), feeds, RecoveryOptions())
    assert why["r1"]["by"] == "consumer_error" and chosen["r1"] < 0.5 * auto["r1"]
    x = _data(96, 9)
    c_auto, c_cons = _cosine(model, auto, x, tmp_path), _cosine(model, chosen, x, tmp_path)
    assert (1 - c_cons) < 0.1 * (1 - c_auto), (c_auto, c_cons)  # measured 0.99502 -> 0.99997


def test_channel_histogram_and_moments_merge_exactly():
    """Split the data in two, reduce each half, merge: the same counts and sums as one pass."""
    from calibkit.recovery.thresholds import ChannelHistogram

    rng = np.random.default_rng(5)
    x = (rng.standard_t(3, size=(10, 6, 5, 5)) * 3).astype(np.float32)
    whole = ChannelHistogram(6, float(np.abs(x).max()))
    whole.update(x, 1)
    a, b = ChannelHistogram(6, float(np.abs(x).max())), ChannelHistogram(6, float(np.abs(x).max()))
    a.update(x[:4], 1)
    b.update(x[4:], 1)
    assert np.array_equal(a.merge(b).counts, whole.counts) and whole.counts.sum() == x.size
    rows = rng.normal(size=(2, 300, 7)).astype(np.float32)
    m, m1, m2 = Moments(2, 7), Moments(2, 7), Moments(2, 7)
    m.update(rows, rows * 0.9)
    m1.update(rows[:, :100], rows[:, :100] * 0.9)
    m2.update(rows[:, 100:], rows[:, 100:] * 0.9)
    merged = m1.merge(m2)
    assert merged.n == m.n == 300
    np.testing.assert_allclose(merged.qx, m.qx, rtol=1e-12)
    np.testing.assert_allclose(merged.cov_qq(), m.cov_qq(), rtol=1e-9, atol=1e-12)


def _matmul_chain(path: Path) -> Path:
    """x[N, 16] -> MatMul (no bias) -> Relu -> MatMul (no bias) -> y[N, 4]: nowhere to put a
    bias correction until one is made."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(4)
    w1 = rng.normal(0, 0.5, (16, 12)).astype(np.float32)
    w2 = rng.normal(0, 0.5, (12, 4)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2"),
    ]
    g = helper.make_graph(
        nodes,
        "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


def test_matmul_without_bias_gets_a_slot_and_is_corrected(tmp_path):
    """A MatMul with no bias Add gets a zero bias Add (taking over its output name) so bias
    correction lands; the output mean drift shrinks, the graph output keeps its name, and with
    bias correction off the model is untouched."""
    path = _matmul_chain(tmp_path / "mm.onnx")
    x = np.abs(np.random.default_rng(1).normal(0, 1, (64, 16))).astype(np.float32)
    np.savez(tmp_path / "cal.npz", x=x)
    res = calibrate(path, tmp_path / "cal.npz", output_dir=tmp_path / "cal")
    model = name_nodes(onnx.load(str(path)))
    amax = {k: v * 0.3 for k, v in res.table.amax().items()}  # clip hard: a real mean shift
    feeds = [{"x": x[i : i + 16]} for i in range(0, 64, 16)]

    def drift(m):
        ref = session(model).run(["y"], {"x": x})[0].mean(0)
        q = onnx.load(str(export_qdq(m, amax, tmp_path / "d.onnx")))
        return float(np.abs(session(q, exact_qdq=True).run(["y"], {"x": x})[0].mean(0) - ref).mean())

    rec, doc = recover_weights(model, amax, feeds, RecoveryOptions(rounding="nearest"))
    assert {doc["layers"][n]["bias"] for n in ("mm1", "mm2")} == {"corrected"}
    adds = [n for n in rec.graph.node if n.op_type == "Add"]
    assert [a.output[0] for a in adds] == ["h", "y"] and [o.name for o in rec.graph.output] == ["y"]
    assert drift(rec) < 0.5 * drift(model), (drift(model), drift(rec))
    same, doc = recover_weights(model, amax, feeds, RecoveryOptions(rounding="nearest", bias_correction=False))
    assert not any(n.op_type == "Add" for n in same.graph.node)


def _deconv(path: Path, stride=2, pads=(1, 0, 1, 0), output_padding=(1, 0), kernel=(3, 3)) -> Path:
    """x[N, 4, 6, 6] -> Conv -> Relu -> ConvTranspose (with bias) -> y."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(6)
    w1 = rng.normal(0, 0.4, (5, 4, 3, 3)).astype(np.float32)
    w2 = rng.normal(0, 0.4, (5, 3, *kernel)).astype(np.float32)  # [Cin, Cout, kh, kw]
    b2 = rng.normal(0, 0.1, 3).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node(
            "ConvTranspose",
            ["r1", "w2", "b2"],
            ["y"],
            strides=[stride, stride],
            pads=list(pads),
            output_padding=list(output_padding),
            name="deconv",
        ),
    ]
    g = helper.make_graph(
        nodes,
        "deconv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [numpy_helper.from_array(a, n) for n, a in (("w1", w1), ("w2", w2), ("b2", b2))],
    )
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


def test_transposed_patches_match_conv_transpose(tmp_path):
    """The transposed gather times the weight matrix gives ConvTranspose's own output (stride
    2, asymmetric pads, output_padding), and the matrix round-trips to the weight's layout."""
    for i, (pads, op) in enumerate((((1, 0, 1, 0), (1, 0)), ((0, 0, 0, 0), (0, 0)), ((1, 1, 1, 1), (1, 1)))):
        path = _deconv(tmp_path / f"d{i}.onnx", pads=pads, output_padding=op)
        model = name_nodes(onnx.load(str(path)))
        layers, skipped = find(model)
        deconv = next(lay for lay in layers if lay.node == "deconv")
        assert deconv.op == "ConvTranspose" and "deconv" not in skipped
        x = _data(3, 2)[:, :, :6, :6]
        r1, y = session(with_outputs(model, ["r1", "y"])).run(["r1", "y"], {"x": x})
        pick = positions(deconv, r1.shape, 10**9, 0)
        assert len(pick) == y.shape[0] * y.shape[2] * y.shape[3]
        p = patches(deconv, r1, pick)
        w2 = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "w2"))
        w = weight_matrix(deconv, w2)
        b2 = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "b2"))
        got = p[0] @ w[0].T + b2
        np.testing.assert_allclose(got, y.transpose(0, 2, 3, 1).reshape(-1, 3), rtol=1e-4, atol=1e-4)
        from calibkit.recovery.layers import weight_from_matrix

        np.testing.assert_array_equal(weight_from_matrix(deconv, w, w2.shape), w2)


def test_conv_transpose_is_recovered(tmp_path):
    """Adaptive rounding and bias correction reach a ConvTranspose; the INT8 output error drops."""
    path = _deconv(tmp_path / "d.onnx")
    x = _data(64, 1)[:, :, :6, :6].copy()
    np.savez(tmp_path / "cal.npz", x=x)
    res = calibrate(path, tmp_path / "cal.npz", output_dir=tmp_path / "cal")
    model = name_nodes(onnx.load(str(path)))
    amax = res.table.amax()
    feeds = [{"x": x[i : i + 16]} for i in range(0, 64, 16)]
    rec, doc = recover_weights(model, amax, feeds, RecoveryOptions(iterations=300))
    assert doc["layers"]["deconv"]["op"] == "ConvTranspose" and doc["layers"]["deconv"]["bias"] == "corrected"
    assert doc["layers"]["deconv"]["error"] <= doc["layers"]["deconv"]["error_nearest"]

    def err(m):
        ref = session(model).run(["y"], {"x": x})[0]
        q = onnx.load(str(export_qdq(m, amax, tmp_path / "e.onnx")))
        return float(np.mean((session(q, exact_qdq=True).run(["y"], {"x": x})[0] - ref) ** 2))

    assert err(rec) < err(model)


def _token_model(tmp_path: Path):
    """x [N, 16 tokens, 8] -> MatMul W [8, 8] -> Add b -> y, like a transformer's projection."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(4)
    w = numpy_helper.from_array(rng.normal(0, 0.5, (8, 8)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.normal(0, 0.1, (8,)).astype(np.float32), "b")
    g = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["mm"], name="proj"),
            helper.make_node("Add", ["mm", "b"], ["y"], name="bias"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 16, 8])],
        [w, b],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return name_nodes(m)


def _tokens(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(0, 1, (n, 16, 8)).astype(np.float32)
    x[:, 0, 3] = 60.0  # one token per sample carries a massive outlier in one channel ([SEP]-like)
    return x


def test_weight_rounding_bias_terms_leave_the_other_tokens_alone(tmp_path):
    """With the outlier token clipped (amax 4), the whole mean shift is its clipping error spread
    over all 16 tokens: "full" bias correction moves every ordinary token's output by it, while
    "weights" corrects only weight rounding's shift (MiniLM: search cosine 0.957 -> 0.825 with
    full, 0.960 with weights)."""
    model = _token_model(tmp_path)
    amax = {"x": 4.0}
    feeds = [{"x": _tokens(8, s)} for s in (1, 2)]
    x = _tokens(32, 9)
    ref = session(model).run(["y"], {"x": x})[0][:, 1:]

    def ordinary_error(m) -> float:
        q = onnx.load(str(export_qdq(m, amax, tmp_path / "t.onnx")))
        got = session(q, exact_qdq=True).run(["y"], {"x": x})[0][:, 1:]
        return float(np.abs(got - ref).mean())

    full, _ = recover_weights(model, amax, feeds, RecoveryOptions(thresholds="method", rounding="nearest"))
    weights, doc = recover_weights(
        model, amax, feeds, RecoveryOptions(thresholds="method", rounding="nearest", bias_terms="weights")
    )
    assert doc["layers"]["proj"]["bias"] == "corrected"
    e_none, e_full, e_weights = ordinary_error(model), ordinary_error(full), ordinary_error(weights)
    assert e_full > 5 * e_none and e_weights < 1.5 * e_none, (e_none, e_full, e_weights)


def test_mean_shift_of_weight_rounding_alone():
    m = Moments(1, 2)
    x = np.array([[[1.0, 2.0], [3.0, 4.0]]], dtype=np.float32)
    m.update(x, x * 0.5)
    w, v = np.array([[[1.0, 1.0]]]), np.array([[[0.5, 1.0]]])
    assert mean_shift(m, w, v, "weights")[0, 0] == 0.5 * (1 + 3) / 2 * 0.5
    assert mean_shift(m, w, w, "weights")[0, 0] == 0.0
