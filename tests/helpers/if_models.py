"""A model whose Conv and MatMul lie inside If branches (silero-VAD style: If on the sample
rate ``sr``, a nested If too), and the same computation written flat, for the Q/DQ tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from models import _save as save
from onnx import TensorProto, helper, numpy_helper

FLAT = 8 * 8 * 8


def _weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "w_top": rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32),
        "w_out": rng.normal(0, 0.5, (8, 3, 3, 3)).astype(np.float32),  # outer scope, used in both branches
        "b_out": rng.normal(0, 0.1, 8).astype(np.float32),
        "wm_then": rng.normal(0, 0.05, (FLAT, 4)).astype(np.float32),  # initializer of the then branch
        "wm_else": rng.normal(0, 0.05, (FLAT, 4)).astype(np.float32),  # Constant node in the else branch
    }


def _out(name: str):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, None)


def if_conv_net(path: Path, seed: int = 0) -> Path:
    """x [N,3,8,8], sr int64 []: a = Conv(x, w_top) at top level;
    y = If(sr == 16000,
           then: Conv(x, w_out) -> Relu -> Flatten -> If(same condition, then: MatMul(., wm_then),
                                                          else: MatMul(. * 0.5, wm_then)),
           else: Conv(x * 2, w_out) -> Relu -> Flatten -> MatMul(., Constant wm_else))."""
    w = _weights(seed)
    init = {k: numpy_helper.from_array(v, k) for k, v in w.items()}
    inner_then = helper.make_graph(
        [helper.make_node("MatMul", ["t_flat", "wm_then"], ["t_out"], name="then_matmul")],
        "inner_then",
        [],
        [_out("t_out")],
    )
    inner_else = helper.make_graph(
        [
            helper.make_node("Mul", ["t_flat", "half"], ["t_half"], name="inner_mul"),
            helper.make_node("MatMul", ["t_half", "wm_then"], ["t2_out"], name="inner_else_matmul"),
        ],
        "inner_else",
        [],
        [_out("t2_out")],
        [numpy_helper.from_array(np.array(0.5, np.float32), "half")],
    )
    then = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w_out", "b_out"], ["t_conv"], pads=[1, 1, 1, 1], name="then_conv"),
            helper.make_node("Relu", ["t_conv"], ["t_relu"], name="then_relu"),
            helper.make_node("Flatten", ["t_relu"], ["t_flat"], name="then_flatten"),
            helper.make_node("If", ["is16k"], ["t_y"], then_branch=inner_then, else_branch=inner_else, name="inner_if"),
        ],
        "then",
        [],
        [_out("t_y")],
        [init["wm_then"]],
    )
    other = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "two"], ["e_x2"], name="else_mul"),
            helper.make_node("Conv", ["e_x2", "w_out", "b_out"], ["e_conv"], pads=[1, 1, 1, 1], name="else_conv"),
            helper.make_node("Relu", ["e_conv"], ["e_relu"], name="else_relu"),
            helper.make_node("Flatten", ["e_relu"], ["e_flat"], name="else_flatten"),
            helper.make_node("Constant", [], ["wm_else"], value=init["wm_else"], name="else_weight"),
            helper.make_node("MatMul", ["e_flat", "wm_else"], ["e_out"], name="else_matmul"),
        ],
        "else",
        [],
        [_out("e_out")],
        [numpy_helper.from_array(np.array(2.0, np.float32), "two")],
    )
    nodes = [
        helper.make_node("Conv", ["x", "w_top"], ["a"], pads=[1, 1, 1, 1], name="top_conv"),
        helper.make_node("Equal", ["sr", "k"], ["is16k"], name="eq"),
        helper.make_node("If", ["is16k"], ["y"], then_branch=then, else_branch=other, name="if_sr"),
    ]
    graph = helper.make_graph(
        nodes,
        "if_conv_net",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8]),
            helper.make_tensor_value_info("sr", TensorProto.INT64, []),
        ],
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 4, 8, 8]),
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4]),
        ],
        [init["w_top"], init["w_out"], init["b_out"], numpy_helper.from_array(np.array(16000, np.int64), "k")],
    )
    return save(graph, path)


def flat_net(path: Path, seed: int = 0) -> Path:
    """The taken path of ``if_conv_net`` (sr 16000) as one top-level graph, same tensor names."""
    w = _weights(seed)
    init = [numpy_helper.from_array(w[k], k) for k in ("w_top", "w_out", "b_out", "wm_then")]
    nodes = [
        helper.make_node("Conv", ["x", "w_top"], ["a"], pads=[1, 1, 1, 1], name="top_conv"),
        helper.make_node("Conv", ["x", "w_out", "b_out"], ["t_conv"], pads=[1, 1, 1, 1], name="then_conv"),
        helper.make_node("Relu", ["t_conv"], ["t_relu"], name="then_relu"),
        helper.make_node("Flatten", ["t_relu"], ["t_flat"], name="then_flatten"),
        helper.make_node("MatMul", ["t_flat", "wm_then"], ["y"], name="then_matmul"),
    ]
    graph = helper.make_graph(
        nodes,
        "flat_net",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 4, 8, 8]),
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4]),
        ],
        init,
    )
    return save(graph, path)


def loop_matmul_net(path: Path, seed: int = 0) -> Path:
    """x [N,4]: Loop 3 times acc = MatMul(acc, w) + MatMul(x, w) (x from the outer scope); y = acc."""
    w = numpy_helper.from_array(np.random.default_rng(seed).normal(0, 0.4, (4, 4)).astype(np.float32), "w_loop")
    body = helper.make_graph(
        [
            helper.make_node("MatMul", ["acc_in", "w_loop"], ["body_mm"], name="carried_matmul"),
            helper.make_node("MatMul", ["x", "w_loop"], ["body_xw"], name="outer_matmul"),
            helper.make_node("Add", ["body_mm", "body_xw"], ["acc_out"], name="body_add"),
            helper.make_node("Identity", ["cond_in"], ["cond_out"], name="body_cond"),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            _out("acc_in"),
        ],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), _out("acc_out")],
    )
    inits = [
        w,
        numpy_helper.from_array(np.array(3, np.int64), "trips"),
        numpy_helper.from_array(np.array(True), "true"),
    ]
    graph = helper.make_graph(
        [helper.make_node("Loop", ["trips", "true", "x"], ["y"], body=body, name="loop")],
        "loop_matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        inits,
    )
    return save(graph, path)


def if_input_cond_net(path: Path, seed: int = 0) -> Path:
    """``cond`` (a rank-0 bool) is a graph input; the then-branch runs a Conv on ``a``, an
    activation of the outer graph produced *before* the If in data flow but listed *after* it
    here, as a quantizer that sorts by explicit inputs alone would leave it (valid only once
    sorted with the branch's outer reads)."""
    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array(rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(0, 0.3, (4, 4, 3, 3)).astype(np.float32), "w2")
    shape = ["N", 4, 8, 8]
    then = helper.make_graph(
        [
            helper.make_node("Conv", ["a", "w2"], ["t"], pads=[1, 1, 1, 1], name="then_conv"),
            helper.make_node("Relu", ["t"], ["yt"], name="then_relu"),
        ],
        "then",
        [],
        [helper.make_tensor_value_info("yt", TensorProto.FLOAT, shape)],
    )
    other = helper.make_graph(
        [helper.make_node("Relu", ["a"], ["ye"], name="else_relu")],
        "else",
        [],
        [helper.make_tensor_value_info("ye", TensorProto.FLOAT, shape)],
    )
    g = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1], name="conv1"),
            helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other, name="branch"),
        ],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8]),
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        [w1, w2],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return path
