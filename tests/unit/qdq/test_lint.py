"""calibkit placement's lint: hand-built patterns TensorRT cannot fuse are found; calibkit's
own trt-fused exports lint clean; --strict exits 3."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_placement_rules import _amax, fused_net

from calibkit.qdq.export import export_qdq
from calibkit.qdq.lint import lint


def _qdq(t, scale, zp=0, tag=None):
    tag = tag or t
    inits = [
        numpy_helper.from_array(np.array(scale, np.float32), f"{tag}_s"),
        numpy_helper.from_array(np.array(zp, np.int8), f"{tag}_z"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", [t, f"{tag}_s", f"{tag}_z"], [f"{tag}_q"], name=f"{tag}_Q"),
        helper.make_node("DequantizeLinear", [f"{tag}_q", f"{tag}_s", f"{tag}_z"], [f"{tag}_dq"], name=f"{tag}_DQ"),
    ]
    return nodes, inits


def _sorted(nodes, ready):
    out, ready, todo = [], set(ready), list(nodes)
    while todo:
        n = next(n for n in todo if all(i in ready for i in n.input))
        todo.remove(n)
        out.append(n)
        ready.update(n.output)
    return out


def bad_net():
    """Every lint once: Q/DQ between conv1 and its residual Add; a Concat of inputs with scales
    0.1 and 0.2; a Q/DQ on a bias through Reshape; a zero point of 3; conv3 quantized between
    two float convs."""
    rng = np.random.default_rng(0)
    w = [numpy_helper.from_array(rng.normal(0, 0.2, (8, 8, 1, 1)).astype(np.float32), f"w{i}") for i in range(5)]
    inits = [*w, numpy_helper.from_array(np.ones(8, np.float32), "bias")]
    inits.append(numpy_helper.from_array(np.array([1, 8, 1, 1], np.int64), "bshape"))
    nodes = []
    for parts in (_qdq("x", 0.05), _qdq("c1", 0.1), _qdq("xb", 0.2), _qdq("rb", 0.1), _qdq("f2", 0.1, zp=3)):
        nodes += parts[0]
        inits += parts[1]
    nodes += [
        helper.make_node("Conv", ["x_dq", "w0"], ["c1"], name="conv1"),
        helper.make_node("Add", ["c1_dq", "x"], ["res"], name="add_res"),  # Q/DQ on the Conv side
        helper.make_node("Relu", ["x"], ["xb"], name="relu"),
        helper.make_node("Concat", ["c1_dq", "xb_dq"], ["cat"], axis=1, name="concat"),  # 0.1 vs 0.2
        helper.make_node("Reshape", ["bias", "bshape"], ["rb"], name="reshape_bias"),
        helper.make_node("Add", ["res", "rb_dq"], ["res2"], name="add_bias"),  # Q/DQ on a constant
        helper.make_node("Conv", ["res2", "w1"], ["f1"], name="conv_float1"),
        helper.make_node("Relu", ["f1"], ["f2"], name="relu2"),
        helper.make_node("Conv", ["f2_dq", "w2"], ["f3"], name="conv_island"),  # zero point 3 too
        helper.make_node("Conv", ["f3", "w3"], ["y"], name="conv_float2"),
    ]
    g = helper.make_graph(
        _sorted(nodes, {i.name for i in inits} | {"x"}),
        "bad",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 4, 4])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 4, 4]),
            helper.make_tensor_value_info("cat", TensorProto.FLOAT, [1, 16, 4, 4]),
        ],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_lint_finds_the_hand_built_patterns():
    m = bad_net()
    onnx.checker.check_model(m)
    found = {(f.lint, f.node) for f in lint(m)}
    assert found == {
        ("conv-add-qdq", "add_res"),
        ("concat-scales", "concat"),
        ("constant-qdq", "rb_Q"),
        ("zero-point", "f2_Q"),
        ("zero-point", "f2_DQ"),
        ("island", "conv_island"),
    }


def test_calibkit_trt_fused_exports_lint_clean(tmp_path):
    path = fused_net(tmp_path / "f.onnx")
    amax, _ = _amax(path)
    for precision in ("int8", "fp8"):
        out = export_qdq(path, amax, tmp_path / f"{precision}.onnx", placement="trt-fused", precision=precision)
        assert lint(onnx.load(str(out))) == []
    # the default placement no longer puts a pair on the bias through Reshape either
    default = export_qdq(path, amax, tmp_path / "trt.onnx", placement="trt")
    assert lint(onnx.load(str(default))) == []


def test_placement_command(cli, tmp_path):
    bad = tmp_path / "bad.onnx"
    onnx.save(bad_net(), str(bad))
    r = cli("placement", bad, "--strict", expect=3)
    assert "concat-scales 1" in r.stdout and "island 1" in r.stdout and "conv-add-qdq 1" in r.stdout
    cli("placement", bad)  # without --strict: exit 0
    path = fused_net(tmp_path / "f.onnx")
    r = cli("placement", path, "--placement", "trt-fused")
    assert "small-channels" in r.stdout and "concat-shared-scale" in r.stdout and "gemv" in r.stdout
    assert "--placement trt-fused" in r.stdout
    r = cli("placement", path)  # the default is export-qdq's: trt, and the output says so
    assert "--placement trt)" in r.stdout and "small-channels" not in r.stdout


def test_conv_side_of_a_residual_stays_float_when_the_conv_output_is_quantized_elsewhere(tmp_path):
    """conv1's output feeds a MaxPool the trt-fused placement quantizes (it feeds conv2) and a
    residual Add: ORT's quantizer points the Add at the dequantized copy; the export points it back."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.2, (16, 16, 1, 1)).astype(np.float32), f"w{i}") for i in (1, 2)]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1"),
        helper.make_node("MaxPool", ["c1"], ["p"], kernel_shape=[1, 1], name="pool"),
        helper.make_node("Conv", ["p", "w2"], ["y2"], name="conv2"),
        helper.make_node("Add", ["c1", "x"], ["y1"], name="add_res"),
    ]
    g = helper.make_graph(
        nodes,
        "join",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 4, 4])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 16, 4, 4]) for n in ("y1", "y2")],
        inits,
    )
    path = tmp_path / "j.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    amax = {"x": 3.0, "c1": 2.0, "p": 2.0, "y1": 4.0, "y2": 1.0}
    q = onnx.load(str(export_qdq(path, amax, tmp_path / "q.onnx", placement="trt-fused")))
    add = next(n for n in q.graph.node if n.name == "add_res")
    assert "c1" in add.input  # the Conv side in float
    assert any(n.op_type == "QuantizeLinear" and n.input[0] == "c1" for n in q.graph.node)  # the pool's pair
    assert lint(q) == []


def test_placement_command_exports_with_scales_and_lints_clean(cli, conv_model, conv_data, tmp_path):
    from calibkit.calibration import calibrate

    calibrate(conv_model, conv_data, output_dir=tmp_path / "cal")
    for placement in ("trt", "trt-fused"):
        r = cli(
            "placement", conv_model, "--scales", tmp_path / "cal" / "scales.json", "--placement", placement, "--strict"
        )
        assert "activation Q nodes:" in r.stdout
        assert "conv-add-qdq 0, concat-scales 0, constant-qdq 0, zero-point 0, scale 0, island 0" in r.stdout


def more_bad_net():
    """What the first lint missed: a Q/DQ on a bias initializer read by an Add; a nonzero zero
    point held by a Constant node; a Concat of one quantized and one float activation; and a
    nonzero zero point inside an If's then-branch (its scale read from the outer graph)."""
    rng = np.random.default_rng(1)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.2, (8, 8, 1, 1)).astype(np.float32), "w0"),
        numpy_helper.from_array(rng.normal(0, 0.2, (8, 8, 1, 1)).astype(np.float32), "w1"),
        numpy_helper.from_array(np.ones((1, 8, 1, 1), np.float32), "bias"),
        numpy_helper.from_array(np.array(0.05, np.float32), "s"),
        numpy_helper.from_array(np.array(0, np.int8), "z0"),
        numpy_helper.from_array(np.array(True), "cond"),
    ]
    zp_const = helper.make_node(
        "Constant", [], ["z5"], name="zp_const", value=numpy_helper.from_array(np.array(5, np.int8), "z5v")
    )
    then_nodes = [
        helper.make_node("QuantizeLinear", ["c1", "s", "z9"], ["tq"], name="then_Q"),
        helper.make_node("DequantizeLinear", ["tq", "s", "z9"], ["then_out"], name="then_DQ"),
    ]
    then_g = helper.make_graph(
        then_nodes,
        "then",
        [],
        [helper.make_tensor_value_info("then_out", TensorProto.FLOAT, [1, 8, 4, 4])],
        [numpy_helper.from_array(np.array(9, np.int8), "z9")],
    )
    else_g = helper.make_graph(
        [helper.make_node("Identity", ["c1"], ["else_out"], name="else_id")],
        "else",
        [],
        [helper.make_tensor_value_info("else_out", TensorProto.FLOAT, [1, 8, 4, 4])],
    )
    nodes = [
        zp_const,
        helper.make_node("QuantizeLinear", ["x", "s", "z0"], ["xq"], name="x_Q"),
        helper.make_node("DequantizeLinear", ["xq", "s", "z0"], ["x_dq"], name="x_DQ"),
        helper.make_node("QuantizeLinear", ["w0", "s", "z0"], ["w0q"], name="w0_Q"),  # a weight: fine
        helper.make_node("DequantizeLinear", ["w0q", "s", "z0"], ["w0_dq"], name="w0_DQ"),
        helper.make_node("Conv", ["x_dq", "w0_dq"], ["c1"], name="conv1"),
        helper.make_node("QuantizeLinear", ["bias", "s", "z0"], ["bq"], name="bias_Q"),  # a bias: reported
        helper.make_node("DequantizeLinear", ["bq", "s", "z0"], ["b_dq"], name="bias_DQ"),
        helper.make_node("Add", ["c1", "b_dq"], ["a1"], name="add_bias"),
        helper.make_node("QuantizeLinear", ["a1", "s", "z5"], ["aq"], name="a_Q"),  # Constant zero point 5
        helper.make_node("DequantizeLinear", ["aq", "s", "z5"], ["a_dq"], name="a_DQ"),
        helper.make_node("Relu", ["c1"], ["r"], name="relu"),
        helper.make_node("Concat", ["a_dq", "r"], ["cat"], axis=1, name="concat_mixed"),
        helper.make_node("If", ["cond"], ["branch"], name="if1", then_branch=then_g, else_branch=else_g),
    ]
    g = helper.make_graph(
        nodes,
        "bad2",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 4, 4])],
        [
            helper.make_tensor_value_info("cat", TensorProto.FLOAT, [1, 16, 4, 4]),
            helper.make_tensor_value_info("branch", TensorProto.FLOAT, [1, 8, 4, 4]),
        ],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_lint_finds_bias_qdq_constant_zero_points_mixed_concats_and_body_findings():
    m = more_bad_net()
    onnx.checker.check_model(m)
    found = {(f.lint, f.node) for f in lint(m)}
    assert found == {
        ("constant-qdq", "bias_Q"),
        ("zero-point", "a_Q"),
        ("zero-point", "a_DQ"),
        ("concat-scales", "concat_mixed"),
        ("zero-point", "if1/then_branch/then_Q"),
        ("zero-point", "if1/then_branch/then_DQ"),
    }
    import onnxruntime as ort

    ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])  # a real graph


@pytest.mark.parametrize("bad", [float("nan"), 0.0, -0.1, float("inf")])
def test_lint_finds_scales_that_are_not_finite_and_positive(bad, tmp_path, cli):
    """A Q/DQ pair with scale NaN, 0, negative or inf linted clean and `placement --strict` exited 0."""
    s = numpy_helper.from_array(np.array(bad, np.float32), "S")
    z = numpy_helper.from_array(np.array(0, np.int8), "Z")
    g = helper.make_graph(
        [
            helper.make_node("QuantizeLinear", ["x", "S", "Z"], ["xq"], name="q"),
            helper.make_node("DequantizeLinear", ["xq", "S", "Z"], ["y"], name="dq"),
        ],
        "badscale",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [s, z],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    assert {(f.lint, f.node) for f in lint(m)} == {("scale", "q"), ("scale", "dq")}
    onnx.save(m, str(tmp_path / "bad.onnx"))
    r = cli("placement", tmp_path / "bad.onnx", "--strict", expect=3)
    assert "scale 1" not in r.stdout and "scale 2" in r.stdout
