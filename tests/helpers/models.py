"""Small ONNX models built in code for the tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _save(graph, path: Path, opset: int = 17) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def conv_net(path: Path, channels: int = 3, hw: int = 8, seed: int = 0, batch="N") -> Path:
    """Conv -> Relu -> Conv + residual -> Relu -> GlobalAveragePool -> Flatten -> Gemm."""
    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array(rng.normal(0, 0.5, (8, channels, 3, 3)).astype(np.float32), "w1")
    b1 = numpy_helper.from_array(rng.normal(0, 0.1, 8).astype(np.float32), "b1")
    w2 = numpy_helper.from_array(rng.normal(0, 0.3, (8, 8, 3, 3)).astype(np.float32), "w2")
    wf = numpy_helper.from_array(rng.normal(0, 0.3, (8, 4)).astype(np.float32), "wf")
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Add", ["c2", "r1"], ["add"], name="add"),
        helper.make_node("Relu", ["add"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "wf"], ["y"], name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "conv_net",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, channels, hw, hw])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4])],
        [w1, b1, w2, wf],
    )
    return _save(graph, path)


def two_input_net(path: Path) -> Path:
    """a, b: float [N, 4]; idx: int64 [N, 1] (an integer input that needs no scale)."""
    w = numpy_helper.from_array(np.linspace(-1, 1, 16, dtype=np.float32).reshape(4, 4), "w")
    nodes = [
        helper.make_node("MatMul", ["a", "w"], ["mm"], name="mm"),
        helper.make_node("Add", ["mm", "b"], ["sum"], name="add"),
        helper.make_node("Shape", ["sum"], ["shape"], name="shape"),
        helper.make_node("Cast", ["idx"], ["idxf"], to=TensorProto.FLOAT, name="cast"),
        helper.make_node("Mul", ["sum", "idxf"], ["out"], name="mul"),
    ]
    graph = helper.make_graph(
        nodes,
        "two_input",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 4]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 4]),
            helper.make_tensor_value_info("idx", TensorProto.INT64, ["N", 1]),
        ],
        [
            helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 4]),
            helper.make_tensor_value_info("shape", TensorProto.INT64, [2]),
        ],
        [w],
    )
    return _save(graph, path)


def log_net(path: Path) -> Path:
    """y = Log(x): negative inputs give NaN activations, zeros give -Inf."""
    graph = helper.make_graph(
        [helper.make_node("Log", ["x"], ["y"], name="log"), helper.make_node("Relu", ["x"], ["r"], name="relu")],
        "log_net",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("r", TensorProto.FLOAT, ["N", 3]),
        ],
    )
    return _save(graph, path)


def wide_net(path: Path, layers: int = 100, width: int = 64, seed: int = 0) -> Path:
    """A deep MatMul/Add/Relu stack with 3 activation tensors a layer (for benchmarks)."""
    rng = np.random.default_rng(seed)
    inits, nodes = [], []
    x = "x"
    for i in range(layers):
        inits.append(
            numpy_helper.from_array((rng.normal(0, 1.2 / np.sqrt(width), (width, width))).astype(np.float32), f"w{i}")
        )
        inits.append(numpy_helper.from_array(rng.normal(0, 0.05, width).astype(np.float32), f"b{i}"))
        nodes += [
            helper.make_node("MatMul", [x, f"w{i}"], [f"mm{i}"]),
            helper.make_node("Add", [f"mm{i}", f"b{i}"], [f"add{i}"]),
            helper.make_node("Relu", [f"add{i}"], [f"relu{i}"]),
        ]
        x = f"relu{i}"
    graph = helper.make_graph(
        nodes,
        "wide",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", width])],
        inits,
    )
    return _save(graph, path)


def scale_net(path: Path, factor: float = 1e5) -> Path:
    """y = Relu(x) * factor: overflows float16 for |x| > 65504 / factor."""
    f = numpy_helper.from_array(np.array(factor, np.float32), "f")
    w = numpy_helper.from_array(np.eye(3, dtype=np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
            helper.make_node("Relu", ["m"], ["r"], name="relu"),
            helper.make_node("Mul", ["r", "f"], ["y"], name="mul"),
        ],
        "scale_net",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [f, w],
    )
    return _save(graph, path)


def hostile_net(path: Path, seed: int = 0) -> Path:
    """Four Conv+Relu layers, GAP, Gemm; conv1's channel 0 is ~500x the others, so the
    per-tensor INT8 scale of conv2's input either crushes channels 1..7 or clips channel 0.
    conv2 reads channel 0 with tiny weights, so the layers after it see normal ranges: conv2
    is the one layer INT8 hurts."""
    rng = np.random.default_rng(seed)
    c = 8
    w1 = rng.normal(0, 0.5, (c, 3, 3, 3)).astype(np.float32)
    w1[0] *= 500.0
    w2 = rng.normal(0, 0.3, (c, c, 3, 3)).astype(np.float32)
    w2[:, 0] /= 500.0
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")]
    for k in (3, 4):
        inits.append(numpy_helper.from_array(rng.normal(0, 0.3, (c, c, 3, 3)).astype(np.float32), f"w{k}"))
    inits.append(numpy_helper.from_array(rng.normal(0, 0.5, (c, 5)).astype(np.float32), "wf"))
    nodes = []
    prev = "x"
    for k in range(1, 5):
        nodes += [
            helper.make_node("Conv", [prev, f"w{k}"], [f"c{k}"], pads=[1, 1, 1, 1], name=f"conv{k}"),
            helper.make_node("Relu", [f"c{k}"], [f"r{k}"], name=f"relu{k}"),
        ]
        prev = f"r{k}"
    nodes += [
        helper.make_node("GlobalAveragePool", [prev], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "wf"], ["y"], name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "hostile_net",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
        inits,
    )
    return _save(graph, path)


def tail_net(path: Path, width: int = 64, seed: int = 0) -> Path:
    """tail = x * 2 -> MatMul -> y: 'tail' carries whatever tail the data has into a quantized MatMul."""
    rng = np.random.default_rng(seed)
    two = numpy_helper.from_array(np.array(2.0, np.float32), "two")
    w = numpy_helper.from_array(rng.normal(0, 1 / np.sqrt(width), (width, 16)).astype(np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "two"], ["tail"], name="mul"),
            helper.make_node("MatMul", ["tail", "w"], ["y"], name="mm"),
        ],
        "tail_net",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])],
        [two, w],
    )
    return _save(graph, path)


def heavy_tail(n: int, width: int = 64, seed: int = 0, tail: float = 0.03, spread: float = 20.0) -> np.ndarray:
    """[n, width] values: N(0, 0.1) with a ``tail`` fraction of Laplace(0, ``spread``) values
    scattered through them (entropy clips more than 1% of such a tensor)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 0.1, (n, width))
    hit = rng.random((n, width)) < tail
    x[hit] = rng.laplace(0, spread, int(hit.sum()))
    return x.astype(np.float32)
