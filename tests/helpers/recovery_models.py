"""Small graphs that need accuracy recovery (tests of calibkit.recovery and calibkit quantize)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _save(nodes, inits, path: Path, shape=("N", 4, 8, 8), out_shape=("N", 6)) -> Path:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, path)
    return path


def chain(path: Path, seed: int = 0, sparse: bool = False) -> Path:
    """Conv -> Relu -> Conv(grouped) -> Relu -> GAP -> Flatten -> Gemm. ``sparse``: conv1's
    channel 3 is huge at a few positions and conv2 reads it through tiny weights."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.5, (8, 4, 3, 3))
    b1 = rng.normal(0, 0.1, 8)
    w2 = rng.normal(0, 0.3, (8, 4, 3, 3))  # groups=2
    if sparse:
        w1[3] = 0.0
        w1[3, 0, 1, 1] = 400.0
        b1[3] = -800.0
        w2[:, 3] *= 1e-2
    wf = rng.normal(0, 0.3, (6, 8))
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], group=2, name="conv2"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "wf"], ["y"], transB=1, name="fc"),
    ]
    return _save(nodes, {"w1": w1, "b1": b1, "w2": w2, "wf": wf}, path)
