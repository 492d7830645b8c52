"""Cross-layer equalization (calibkit.recovery.equalize): which Conv pairs are found, the FP32
function is unchanged through ONNX Runtime, per-channel weight ranges even out."""

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
from calibkit.recovery.equalize import equalize, pairs, range_ratio

MODELS = Path(os.environ.get("CALIBKIT_CORPUS", Path.home() / ".cache" / "calibkit-corpus")) / "models"
UNEVEN = np.array([1.0, 50.0, 0.02, 1.0, 5.0, 0.2, 10.0, 1.0])  # conv1's per-output-channel weight scales


def _model(nodes, inits: dict, inputs=("x",), outputs=("y",), opset: int = 17, const_nodes=()) -> onnx.ModelProto:
    vi = helper.make_tensor_value_info
    consts = [
        helper.make_node("Constant", [], [k], value=numpy_helper.from_array(np.asarray(inits[k], np.float32), k))
        for k in const_nodes
    ]
    graph = helper.make_graph(
        consts + nodes,
        "g",
        [vi(n, TensorProto.FLOAT, ["N", "C", "H", "W"]) for n in inputs],
        [vi(n, TensorProto.FLOAT, ["N", "C", "H", "W"]) for n in outputs],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items() if k not in const_nodes],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def _run(model, feed, names=()) -> dict[str, np.ndarray]:
    m = with_outputs(model, list(names)) if names else model
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed)))


def _same(model, other, feed, names=(), only: bool = False) -> None:
    """``other`` computes what ``model`` does: its outputs (and ``names``; only those if ``only``)."""
    a, b = _run(model, feed, names), _run(other, feed, names)
    for name, v in a.items():
        if only and name not in names:
            continue
        np.testing.assert_allclose(b[name], v, rtol=1e-4, atol=1e-5 * float(np.abs(v).max()), err_msg=name)


def _x(c: int = 3, n: int = 2, hw: int = 8, seed: int = 1) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).normal(0, 1, (n, c, hw, hw)).astype(np.float32)}


def _init(model, name) -> np.ndarray:
    return numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name))


def _weight(model, node_name, slot=1) -> np.ndarray:
    return _init(model, next(n for n in model.graph.node if n.name == node_name).input[slot])


def _rows(w: np.ndarray) -> np.ndarray:
    return np.abs(w.astype(np.float64)).reshape(w.shape[0], -1).max(axis=1)


def _cols(w: np.ndarray) -> np.ndarray:
    return np.abs(w.astype(np.float64)).max(axis=(0, 2, 3))


def _pair_model(middle: list, extra_inits: dict | None = None, opset: int = 17, tail=(), **kw) -> onnx.ModelProto:
    """x -> conv1 (8 channels, deliberately uneven ranges, bias) -> ``middle`` nodes (c1 -> m) -> conv2 -> y."""
    rng = np.random.default_rng(0)
    inits = {
        "w1": rng.normal(0, 0.3, (8, 3, 3, 3)) * UNEVEN[:, None, None, None],
        "b1": rng.normal(0, 0.1, 8),
        "w2": rng.normal(0, 0.3, (4, 8, 3, 3)),
    } | (extra_inits or {})
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1])]
    nodes += middle
    last = middle[-1].output[0] if middle else "c1"
    nodes.append(helper.make_node("Conv", [last, "w2"], ["y"], name="conv2", pads=[1, 1, 1, 1]))
    return _model(nodes + list(tail), inits, opset=opset, **kw)


def test_plain_pair_ranges_even_out():
    model = _pair_model([helper.make_node("Relu", ["c1"], ["m"], name="relu")])
    before_bytes = model.SerializeToString()
    (p,) = pairs(model)
    assert (p.first, p.second, p.channels, p.between, p.bn_index) == ("conv1", "conv2", 8, ("Relu",), None)
    eq, (rec,) = equalize(model)
    assert model.SerializeToString() == before_bytes  # the input model is untouched
    _same(model, eq, _x())
    json.dumps(rec)
    r1, r2 = _rows(_weight(model, "conv1")), _cols(_weight(model, "conv2"))
    a1, a2 = _rows(_weight(eq, "conv1")), _cols(_weight(eq, "conv2"))
    np.testing.assert_allclose(a1, np.sqrt(r1 * r2), rtol=1e-5)  # both sides meet at the geometric mean
    np.testing.assert_allclose(a2, a1, rtol=1e-5)
    s = r1 / a1
    np.testing.assert_allclose(_weight(eq, "conv1", 2), _weight(model, "conv1", 2) / s, rtol=1e-5)  # bias / s
    assert range_ratio(r1) > 35 and range_ratio(a1) < 8  # measured 42.3 -> 6.8
    assert rec["range_ratio_before"] == pytest.approx(max(range_ratio(r1), range_ratio(r2)))
    assert rec["range_ratio_before"] > 35 and rec["range_ratio_after"] < 8
    assert rec["first"] == "conv1" and rec["second"] == "conv2" and rec["channels"] == 8
    assert rec["sweeps"] == 2  # a lone pair settles in one sweep; the second finds nothing to move


def _clip(lo, hi, opset):
    if opset < 11:
        attrs = {k: v for k, v in (("min", lo), ("max", hi)) if v is not None}
        return [helper.make_node("Clip", ["c1"], ["m"], name="clip", **attrs)], {}
    inits = {k: np.array(v, np.float32) for k, v in (("lo", lo), ("hi", hi)) if v is not None}
    return [
        helper.make_node("Clip", ["c1", "lo" if lo is not None else "", "hi" if hi is not None else ""], ["m"])
    ], inits


HOMOGENEOUS = {
    "none": ([], {}, 17),
    "relu": ([helper.make_node("Relu", ["c1"], ["m"])], {}, 17),
    "leaky": ([helper.make_node("LeakyRelu", ["c1"], ["m"], alpha=0.1)], {}, 17),
    "prelu_scalar": ([helper.make_node("PRelu", ["c1", "slope"], ["m"])], {"slope": np.array([0.25])}, 17),
    "prelu_channel": (
        [helper.make_node("PRelu", ["c1", "slope"], ["m"])],
        {"slope": np.linspace(-0.5, 0.5, 8).reshape(8, 1, 1)},
        17,
    ),
    "clip_min0_input": (*_clip(0.0, None, 13), 13),
    "clip_min0_inf": (*_clip(0.0, np.inf, 13), 13),
    "clip_min0_attr": (*_clip(0.0, None, 10), 10),
    "maxpool": ([helper.make_node("MaxPool", ["c1"], ["m"], kernel_shape=[2, 2], strides=[1, 1])], {}, 17),
    "bn_relu": (
        [
            helper.make_node("BatchNormalization", ["c1", "g", "beta", "mean", "var"], ["bn"], name="bn"),
            helper.make_node("Relu", ["bn"], ["m"]),
        ],
        {
            "g": np.linspace(-2.0, 3.0, 8),
            "beta": np.linspace(-0.5, 0.5, 8),
            "mean": np.linspace(-0.2, 0.2, 8),
            "var": np.linspace(0.5, 2.0, 8),
        },
        17,
    ),
}


@pytest.mark.parametrize("case", sorted(HOMOGENEOUS))
def test_homogeneous_middles_keep_fp32(case):
    middle, inits, opset = HOMOGENEOUS[case]
    model = _pair_model(middle, inits, opset=opset)
    (p,) = pairs(model)
    assert p.between == tuple(n.op_type for n in middle)
    eq, (rec,) = equalize(model)
    _same(model, eq, _x())
    assert rec["range_ratio_after"] < rec["range_ratio_before"]


def test_batchnorm_takes_the_scale_conv1_untouched():
    middle, inits, _ = HOMOGENEOUS["bn_relu"]
    model = _pair_model(middle, inits)
    eq, (rec,) = equalize(model)
    np.testing.assert_array_equal(_weight(eq, "conv1"), _weight(model, "conv1"))  # the BN's gamma/beta move
    g0, g1 = _weight(model, "bn"), _weight(eq, "bn")
    s = g0 / g1
    np.testing.assert_allclose(_weight(eq, "bn", 2), _weight(model, "bn", 2) / s, rtol=1e-5)
    np.testing.assert_array_equal(_weight(eq, "bn", 3), _weight(model, "bn", 3))  # mean, var unchanged
    # r1 is the BN-folded weight's range: after, it equals conv2's input-channel range
    fold = np.abs(g1.astype(np.float64)) / np.sqrt(_weight(eq, "bn", 4).astype(np.float64) + 1e-5)
    np.testing.assert_allclose(_rows(_weight(eq, "conv1")) * fold, _cols(_weight(eq, "conv2")), rtol=1e-5)


NOT_PAIRS = {
    "relu6_inputs": (*_clip(0.0, 6.0, 13), 13),
    "relu6_attrs": (*_clip(0.0, 6.0, 10), 10),
    "clip_negative_min": (*_clip(-1.0, None, 13), 13),
    "sigmoid": ([helper.make_node("Sigmoid", ["c1"], ["m"])], {}, 17),
    "hardswish": ([helper.make_node("HardSwish", ["c1"], ["m"])], {}, 17),
}


@pytest.mark.parametrize("case", sorted(NOT_PAIRS))
def test_non_homogeneous_middles_are_not_pairs(case):
    middle, inits, opset = NOT_PAIRS[case]
    model = _pair_model(middle, inits, opset=opset)
    assert pairs(model) == []
    eq, records = equalize(model)
    assert records == [] and eq.SerializeToString() == model.SerializeToString()


def test_middle_read_twice_or_a_graph_output_is_not_a_pair():
    relu = helper.make_node("Relu", ["c1"], ["m"])
    assert pairs(_pair_model([relu], outputs=("y", "m"))) == []
    branch = _pair_model([relu, helper.make_node("Identity", ["m"], ["m2"])])  # m2 -> conv2; m only to Identity
    assert len(pairs(branch)) == 1
    twice = _pair_model([relu])
    twice.graph.node.append(helper.make_node("Relu", ["m"], ["other"]))
    twice.graph.output.append(helper.make_tensor_value_info("other", TensorProto.FLOAT, None))
    assert pairs(twice) == []


def _mobilenet_block(depthwise_scale: np.ndarray) -> onnx.ModelProto:
    """1x1 expand (4 -> 16) -> BN -> ReLU -> 3x3 depthwise (uneven channels) -> BN -> ReLU -> 1x1 project (16 -> 8)."""
    rng = np.random.default_rng(3)
    inits = {
        "we": rng.normal(0, 0.4, (16, 4, 1, 1)),
        "wd": rng.normal(0, 0.4, (16, 1, 3, 3)) * depthwise_scale[:, None, None, None],
        "bd": rng.normal(0, 0.1, 16),
        "wp": rng.normal(0, 0.3, (8, 16, 1, 1)),
        "bp": rng.normal(0, 0.1, 8),
    }
    inits |= {
        "ge": rng.uniform(0.5, 2.0, 16),
        "be": rng.normal(0, 0.2, 16),
        "me": rng.normal(0, 0.1, 16),
        "ve": rng.uniform(0.5, 1.5, 16),
    }
    nodes = [
        helper.make_node("Conv", ["x", "we"], ["e"], name="expand"),
        helper.make_node("BatchNormalization", ["e", "ge", "be", "me", "ve"], ["eb"], name="bn_e"),
        helper.make_node("Relu", ["eb"], ["er"]),
        helper.make_node("Conv", ["er", "wd", "bd"], ["d"], name="dw", group=16, pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["d"], ["dr"]),
        helper.make_node("Conv", ["dr", "wp", "bp"], ["y"], name="project"),
    ]
    return _model(nodes, inits)


def test_depthwise_separable_chain():
    scale = np.geomspace(0.01, 30.0, 16)[np.random.default_rng(4).permutation(16)]
    model = _mobilenet_block(scale)
    found = pairs(model)
    assert [(p.first, p.second, p.between) for p in found] == [
        ("expand", "dw", ("BatchNormalization", "Relu")),
        ("dw", "project", ("Relu",)),
    ]
    eq, records = equalize(model)
    _same(model, eq, _x(4))
    before, after = _rows(_weight(model, "dw")), _rows(_weight(eq, "dw"))
    assert range_ratio(before) > 50 and range_ratio(after) < 4  # measured 63.5 -> 2.9
    assert records[1]["range_ratio_before"] > 50 and records[1]["range_ratio_after"] < 4
    assert all(r["sweeps"] > 2 for r in records)  # the chain takes more than one sweep
    again, rerun = equalize(eq)
    for r in rerun:  # converged: another pass barely moves anything
        assert 0.98 < r["scale_min"] <= r["scale_max"] < 1.02


def test_grouped_second_conv():
    rng = np.random.default_rng(5)
    inits = {
        "w1": rng.normal(0, 0.3, (8, 3, 3, 3)) * UNEVEN[:, None, None, None],
        "w2": rng.normal(0, 0.3, (6, 4, 3, 3)),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1"),
        helper.make_node("Relu", ["c1"], ["m"]),
        helper.make_node("Conv", ["m", "w2"], ["y"], name="conv2", group=2),
    ]
    model = _model(nodes, inits)
    (p,) = pairs(model)
    assert p.channels == 8
    eq, (rec,) = equalize(model)
    _same(model, eq, _x())
    assert rec["range_ratio_after"] < rec["range_ratio_before"] / 3


def test_shared_weight_is_copied_and_constant_nodes_edited_in_place():
    """conv2's weight is also read by a third conv on another input: that conv's output must not
    move and the original initializer keeps its values. Weights as Constant nodes (Paddle2ONNX)
    are rewritten in place."""
    conv3 = helper.make_node("Conv", ["z", "w2"], ["y3"], name="conv3", pads=[1, 1, 1, 1])
    model = _pair_model([helper.make_node("Relu", ["c1"], ["m"])], tail=[conv3], inputs=("x", "z"), outputs=("y", "y3"))
    feed = _x() | {"z": np.random.default_rng(6).normal(0, 1, (2, 8, 8, 8)).astype(np.float32)}
    eq, (rec,) = equalize(model)
    _same(model, eq, feed)
    np.testing.assert_array_equal(_init(eq, "w2"), _init(model, "w2"))
    conv2 = next(n for n in eq.graph.node if n.name == "conv2")
    assert conv2.input[1] == "w2_cle"
    rng = np.random.default_rng(0)
    inits = {
        "w1": rng.normal(0, 0.3, (8, 3, 3, 3)) * UNEVEN[:, None, None, None],
        "w2": rng.normal(0, 0.3, (4, 8, 3, 3)),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1"),
        helper.make_node("Relu", ["c1"], ["m"]),
        helper.make_node("Conv", ["m", "w2"], ["y"], name="conv2"),
    ]
    paddle = _model(nodes, inits, const_nodes=("w1", "w2"))
    eq, (rec,) = equalize(paddle)
    _same(paddle, eq, _x())
    assert len(eq.graph.initializer) == 0 and [n.op_type for n in eq.graph.node] == [
        n.op_type for n in paddle.graph.node
    ]
    assert rec["range_ratio_after"] < rec["range_ratio_before"] / 3


def test_bad_iterations():
    with pytest.raises(CalibkitError, match="iterations"):
        equalize(_pair_model([]), iterations=0)


CORPUS = {  # model dir, input shape, pairs found
    "ppocrv4_det": ((1, 3, 64, 64), 15),
    "ppocr_cls": ((1, 3, 48, 192), 6),
    "ppocrv4_rec": ((1, 3, 48, 160), 3),
}


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_corpus_pairs_and_fp32_unchanged(name):
    files = sorted((MODELS / name).glob("*.onnx"))
    if not files:
        pytest.skip(f"{MODELS / name} absent (python tools/corpus.py fetch)")
    model = onnx.load(str(files[0]))
    shape, count = CORPUS[name]
    assert len(pairs(model)) == count
    eq, records = equalize(model)
    assert len(records) == count
    json.dumps(records)
    # compare the last float tensor before any Sigmoid/Softmax (their outputs saturate on random input)
    heads = [n.input[0] for n in model.graph.node if n.op_type in ("Sigmoid", "Softmax")][-1:]
    feed = {model.graph.input[0].name: np.random.default_rng(7).uniform(-1, 1, shape).astype(np.float32)}
    _same(model, eq, feed, heads, only=True)
