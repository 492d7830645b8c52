"""Small graphs for the feed/collection tests (dims, state/scalar inputs, subgraphs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from models import _save as save  # noqa: E402  (one way to write a test model)
from onnx import TensorProto, helper, numpy_helper


def relu_net(path: Path, dims: list) -> Path:
    """y = Relu(x) * 2 with x declared with ``dims`` (ints, names, -1, 0, None for an empty dim)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, None)
    for d in dims:
        dim = x.type.tensor_type.shape.dim.add()
        if isinstance(d, str):
            dim.dim_param = d
        elif d is not None:
            dim.dim_value = d
    two = numpy_helper.from_array(np.array(2.0, np.float32), "two")
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Mul", ["r", "two"], ["y"])]
    y = onnx.ValueInfoProto()
    y.CopyFrom(x)
    y.name = "y"
    return save(helper.make_graph(nodes, "relu", [x], [y], [two]), path)


def state_net(path: Path) -> Path:
    """x [N,4], state [2,N,4] (samples on axis 1), sr int64 [] (0-d), h [1,4] (shared):
    y = x * state[0] + h * sr; plus a Transpose output [4, N] and a 0-d ReduceMean of h * sr."""
    srf = helper.make_node("Cast", ["sr"], ["srf"], to=TensorProto.FLOAT)
    nodes = [
        helper.make_node("Gather", ["state", "zero"], ["s0"], axis=0),
        helper.make_node("Mul", ["x", "s0"], ["xs"]),
        srf,
        helper.make_node("Mul", ["h", "srf"], ["hs"]),
        helper.make_node("Add", ["xs", "hs"], ["y"]),
        helper.make_node("Transpose", ["y"], ["yt"], perm=[1, 0]),
        helper.make_node("ReduceMean", ["hs"], ["mean"], keepdims=0),  # 0-d, the same for every run
        helper.make_node("Add", ["yt", "mean"], ["out"]),
    ]
    zero = numpy_helper.from_array(np.array(0, np.int64), "zero")
    graph = helper.make_graph(
        nodes,
        "state",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "batch", 4]),
            helper.make_tensor_value_info("sr", TensorProto.INT64, []),
            helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, 4]),
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [4, "batch"])],
        [zero],
    )
    return save(graph, path)


def transpose_net(path: Path) -> Path:
    """x [N,8,5] -> Reshape [N,2,4,5] -> Transpose [2,N,5,4] -> Relu; plus a 0-d ReduceMax."""
    shape = numpy_helper.from_array(np.array([0, 2, 4, 5], np.int64), "shape")
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["rs"]),
        helper.make_node("Transpose", ["rs"], ["tr"], perm=[1, 0, 3, 2]),
        helper.make_node("Relu", ["tr"], ["relu"]),
        helper.make_node("ReduceMax", ["relu"], ["mx"], keepdims=0),
        helper.make_node("Div", ["relu", "mx"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "transpose",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, "N", 5, 4])],
        [shape],
    )
    return save(graph, path)


def wrong_rank_net(path: Path) -> Path:
    """Declares output y as [N] (rank 1) but produces [N, 3] (rank 2), like real exports do."""
    nodes = [helper.make_node("Relu", ["x"], ["y"])]
    graph = helper.make_graph(
        nodes,
        "wrong_rank",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)  # the checker does not look at declared output shapes
    return path


def if_net(path: Path) -> Path:
    """x [N,3], sr int64 []: y = If(sr == 16000, then: Relu(x)*3 -> 'big', else: Sigmoid(x))."""
    then = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["t_relu"]), helper.make_node("Mul", ["t_relu", "three"], ["t_out"])],
        "then",
        [],
        [helper.make_tensor_value_info("t_out", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array(3.0, np.float32), "three")],
    )
    other = helper.make_graph(
        [helper.make_node("Sigmoid", ["x"], ["e_out"])],
        "else",
        [],
        [helper.make_tensor_value_info("e_out", TensorProto.FLOAT, None)],
    )
    k = numpy_helper.from_array(np.array(16000, np.int64), "k")
    nodes = [
        helper.make_node("Equal", ["sr", "k"], ["is16k"]),
        helper.make_node("If", ["is16k"], ["branch"], then_branch=then, else_branch=other, name="if_sr"),
        helper.make_node("Add", ["branch", "x"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "if_net",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("sr", TensorProto.INT64, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [k],
    )
    return save(graph, path)


def loop_net(path: Path) -> Path:
    """x [N,3]: Loop 3 times acc = Tanh(acc) + x; y = acc * 2."""
    body = helper.make_graph(
        [
            helper.make_node("Tanh", ["acc_in"], ["body_tanh"]),
            helper.make_node("Add", ["body_tanh", "x"], ["acc_out"]),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, None),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, None),
        ],
    )
    inits = [
        numpy_helper.from_array(np.array(3, np.int64), "trips"),
        numpy_helper.from_array(np.array(True), "true"),
        numpy_helper.from_array(np.array(2.0, np.float32), "two"),
    ]
    nodes = [
        helper.make_node("Loop", ["trips", "true", "x"], ["acc"], body=body, name="loop"),
        helper.make_node("Mul", ["acc", "two"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "loop_net",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        inits,
    )
    return save(graph, path)


def state_scalar_net(path: Path, seed: int = 0) -> Path:
    """state [2, N, 4] (samples on axis 1, declared so only --batch-axis state:1 says so) and
    sr int64 [] only, no [N, ...] input: y [N, 3] = MatMul(state[1] * sr / 16000 + state[0], w)
    (class scores); state_out = state * 0.5."""
    w = numpy_helper.from_array(np.random.default_rng(seed).normal(0, 1, (4, 3)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Gather", ["state", "zero"], ["s0"], axis=0),
        helper.make_node("Gather", ["state", "one"], ["s1"], axis=0),
        helper.make_node("Cast", ["sr"], ["srf"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["srf", "k"], ["srn"]),
        helper.make_node("Mul", ["s1", "srn"], ["s1n"]),
        helper.make_node("Add", ["s0", "s1n"], ["z"]),
        helper.make_node("MatMul", ["z", "w"], ["y"]),
        helper.make_node("Mul", ["state", "half"], ["state_out"]),
    ]
    inits = [
        w,
        numpy_helper.from_array(np.array(0, np.int64), "zero"),
        numpy_helper.from_array(np.array(1, np.int64), "one"),
        numpy_helper.from_array(np.array(16000.0, np.float32), "k"),
        numpy_helper.from_array(np.array(0.5, np.float32), "half"),
    ]
    graph = helper.make_graph(
        nodes,
        "state_scalar",
        [
            helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "N", 4]),
            helper.make_tensor_value_info("sr", TensorProto.INT64, []),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("state_out", TensorProto.FLOAT, [2, "N", 4]),
        ],
        inits,
    )
    return save(graph, path)
