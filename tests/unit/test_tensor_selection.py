"""calibrate --tensors trt|qdq|all: which tensors get histograms (calibkit/qdq/fusion.py), what
scales.json says about the others, and that the Q/DQ export still finds every scale it needs."""

from __future__ import annotations

import json

import models
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from calibkit.artifacts import trt_cache as cache
from calibkit.qdq import fusion


def _model(nodes, inits, outputs=("y",), shape=(None, 4, 6, 6)):
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *shape[1:]])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _init(name, shape, seed=0):
    return numpy_helper.from_array(np.random.default_rng(seed).normal(0, 0.5, shape).astype(np.float32), name)


def test_conv_bn_activation_chain_is_internal_up_to_its_last_output():
    bn = [_init(n, (4,), i) for i, n in enumerate(("s", "b", "m"))]
    bn.append(numpy_helper.from_array(np.ones(4, np.float32), "v"))
    m = _model(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
            helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["bn"]),
            helper.make_node("HardSwish", ["bn"], ["act"]),
            helper.make_node("Conv", ["act", "w2"], ["c2"], name="conv2"),
            helper.make_node("Relu", ["c2"], ["y"]),
        ],
        [_init("w", (4, 4, 3, 3)), _init("w2", (4, 4, 1, 1), 1), *bn],
    )
    inside = fusion.fused_internal(m)
    assert list(inside) == ["c", "bn", "c2"]
    assert "'conv'" in inside["c"] and "Conv -> BatchNormalization" in inside["c"]
    assert "BatchNormalization -> HardSwish" in inside["bn"]


def test_swish_is_internal_but_a_graph_output_or_a_residual_join_stays():
    m = _model(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
            helper.make_node("Sigmoid", ["c"], ["sig"]),
            helper.make_node("Mul", ["c", "sig"], ["swish"]),  # c, sig: both read inside the layer
            helper.make_node("Conv", ["swish", "w"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
            helper.make_node("Add", ["c2", "swish"], ["res"]),  # residual join: kept
            helper.make_node("Conv", ["res", "w"], ["c3"], name="conv3", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c3"], ["y"]),  # c3 is also a graph output: kept
        ],
        [_init("w", (4, 4, 3, 3))],
        outputs=("y", "c3"),
    )
    inside = fusion.fused_internal(m)
    assert list(inside) == ["c", "sig"] and inside["c"].endswith("(Conv -> Sigmoid, Mul)")


def test_weighted_matmul_with_constant_bias_fuses_but_activation_matmul_does_not():
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["mm"]),
            helper.make_node("Add", ["mm", "bias"], ["biased"]),
            helper.make_node("Relu", ["biased"], ["r"]),
            helper.make_node("MatMul", ["r", "x2"], ["mm2"]),  # activation x activation: no head
            helper.make_node("Relu", ["mm2"], ["y"]),
        ],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
            helper.make_tensor_value_info("x2", TensorProto.FLOAT, [4, 4]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [_init("w", (4, 4)), _init("bias", (4,), 1)],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert list(fusion.fused_internal(m)) == ["mm", "biased"]


def test_select_modes(tmp_path):
    m = onnx.load(models.conv_net(tmp_path / "conv.onnx"))
    names = ["x", "c1", "r1", "c2", "add", "r2", "gap", "flat", "y"]
    assert fusion.select(m, names, "all") == (names, {})
    kept, dropped = fusion.select(m, names, "trt")
    assert kept == ["x", "r1", "c2", "add", "r2", "gap", "flat", "y"] and list(dropped) == ["c1"]
    kept, dropped = fusion.select(m, names, "qdq")
    # Conv inputs x, r1; Gemm input flat; the residual Add's skip input r1
    assert kept == ["x", "r1", "flat"] and set(dropped) == set(names) - set(kept)
    with pytest.raises(ValueError, match="must be one of"):
        fusion.select(m, names, "some")


def _run(cli, model, data, out, *extra):
    cli("calibrate", model, "--data", data, "-o", out, *extra)
    return cache.read(out / "conv.cache").scales, json.loads((out / "scales.json").read_text())


def test_cli_default_skips_fused_tensors_and_lists_them(cli, conv_model, conv_data, tmp_path):
    scales, table = _run(cli, conv_model, conv_data, tmp_path / "trt")
    assert list(scales) == ["x", "r1", "c2", "add", "r2", "gap", "flat", "y"]
    assert table["tensors"] != {} and table["tensors"].keys() == scales.keys()
    assert table["skipped"] == {"c1": "inside the fused Conv layer 'conv1' (Conv -> Relu)"}
    assert table["tensor_selection"] == "trt"


def test_cli_all_lists_nothing_skipped_and_keeps_every_tensor(cli, conv_model, conv_data, tmp_path):
    scales, table = _run(cli, conv_model, conv_data, tmp_path / "all", "--tensors", "all")
    assert list(scales) == ["x", "c1", "r1", "c2", "add", "r2", "gap", "flat", "y"]
    assert "skipped" not in table and "tensor_selection" not in table and "uncalibrated" in table


def test_stored_histograms_of_another_selection_are_not_reused(cli, conv_model, conv_data, tmp_path):
    out = tmp_path / "o"
    _run(cli, conv_model, conv_data, out, "--tensors", "qdq")
    scales, _ = _run(cli, conv_model, conv_data, out, "--tensors", "all")
    assert "c1" in scales and "y" in scales  # recollected, not the qdq set's 3 tensors
    scales, table = _run(cli, conv_model, conv_data, out, "--tensors", "qdq")
    assert list(scales) == ["x", "r1", "flat"] and table["skipped"]["y"].endswith("(--tensors qdq)")


@pytest.mark.parametrize("selection", ["trt", "qdq"])
def test_qdq_export_finds_every_scale_it_needs(cli, conv_model, conv_data, tmp_path, selection):
    _run(cli, conv_model, conv_data, tmp_path / "s", "--tensors", selection)
    cli("export-qdq", conv_model, "--scales", tmp_path / "s" / "scales.json", "-o", tmp_path / "q.onnx")
    q = onnx.load(tmp_path / "q.onnx")
    quantized = {n.input[0] for n in q.graph.node if n.op_type == "QuantizeLinear"}
    assert {"x", "r1", "flat"} <= quantized


def test_bad_selection_is_a_usage_error(cli, conv_model, conv_data, tmp_path):
    r = cli("calibrate", conv_model, "--data", conv_data, "--tensors", "fused", "-o", tmp_path / "o", expect=2)
    assert "--tensors" in r.stderr and "trt" in r.stderr


def test_exact_kl_matches_scipy_stats_entropy():
    from scipy.stats import entropy as scipy_kl

    from calibkit.methods import entropy

    rng = np.random.default_rng(3)
    for _ in range(20):
        bins = np.floor(rng.exponential(50, 2048) * (rng.random(2048) > 0.3))
        bins[0] = bins[1]
        for i in (128, 700, 2048):
            p, q = entropy.pq(bins, i, 128)
            if q.sum() == 0 or np.any((q == 0) & (p > 0)):
                continue
            assert entropy._kl_exact(bins, i, 128) == float(scipy_kl(p, q))


def test_decomposed_hard_swish_and_a_tensor_read_outside_the_layer():
    three = numpy_helper.from_array(np.array(3.0, np.float32), "three")
    six = numpy_helper.from_array(np.array(6.0, np.float32), "six")
    zero = numpy_helper.from_array(np.array(0.0, np.float32), "zero")
    m = _model(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
            helper.make_node("Add", ["c", "three"], ["a"]),
            helper.make_node("Clip", ["a", "zero", "six"], ["cl"]),
            helper.make_node("Mul", ["c", "cl"], ["m"]),
            helper.make_node("Div", ["m", "six"], ["hs"]),
            helper.make_node("GlobalAveragePool", ["a"], ["gap"]),  # a is read outside: kept
            helper.make_node("Add", ["hs", "gap"], ["y"]),
        ],
        [_init("w", (4, 4, 3, 3)), three, six, zero],
    )
    assert list(fusion.fused_internal(m)) == ["c", "cl", "m"]


def test_a_tensor_read_inside_an_if_body_is_never_dropped():
    """Conv -> BN -> Relu whose BN output is also read inside an If branch: TensorRT cannot
    fuse it away, so --tensors trt keeps it (a body's outer reads count as readers)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from calibkit.qdq.fusion import fused_internal

    w = numpy_helper.from_array(np.ones((2, 2, 1, 1), np.float32), "w")
    bn = [numpy_helper.from_array(np.ones(2, np.float32), n) for n in ("s", "b", "m", "v")]
    body = helper.make_graph(
        [helper.make_node("Identity", ["bn1o"], ["t"])], "then", [], [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)]
    )
    other = helper.make_graph(
        [helper.make_node("Identity", ["r1"], ["e"])], "else", [], [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)]
    )
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c1"], name="conv1"),
        helper.make_node("BatchNormalization", ["c1", "s", "b", "m", "v"], ["bn1o"], name="bn1"),
        helper.make_node("Relu", ["bn1o"], ["r1"], name="relu1"),
        helper.make_node("If", ["flag"], ["y"], then_branch=body, else_branch=other, name="if"),
    ]
    g = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4]), helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [w, *bn],
    )
    dropped = fused_internal(helper.make_model(g))
    assert "bn1o" not in dropped and "c1" in dropped


def test_qdq_selection_says_what_its_cache_is_for(cli, tmp_path, conv_model, conv_data):
    r = cli("calibrate", conv_model, "--data", conv_data, "--tensors", "qdq", "-o", tmp_path / "q")
    assert "--tensors qdq" in r.stderr and "TensorRT 10" in r.stderr
    r = cli("calibrate", conv_model, "--data", conv_data, "-o", tmp_path / "t")
    assert "--tensors qdq" not in r.stderr
