"""Rows of the layers' inputs from real runs: the FP32 model and, beside it, the Q/DQ model.

One ONNX Runtime session per model, the layers' inputs exposed as outputs, one batch at a time;
the same sampled positions are taken from both runs, so row ``i`` of the float and of the
quantized input are the same patch of the same sample. Only the sampled rows are kept.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx

from calibkit.graph.model import with_outputs
from calibkit.recovery.layers import Layer, patches, positions
from calibkit.sessions import session


def quantized_inputs(qdq: onnx.ModelProto, layers: list[Layer]) -> dict[str, str]:
    """{layer node: the tensor it reads in the Q/DQ model} (a DequantizeLinear output when quantized)."""
    by_name = {n.name: n for n in qdq.graph.node}
    return {layer.node: by_name[layer.node].input[0] for layer in layers if layer.node in by_name}


def row_limit(layer: Layer, k: int, budget: float) -> int:
    """Rows per batch for a layer whose rows have ``k`` values: the K x K products stay within
    ``budget`` multiply-adds, between 256 and 4096 rows."""
    return int(np.clip(budget / max(k * k, 1), 256, 4096))


def tensors(
    model: onnx.ModelProto, names: list[str], feeds: list[dict[str, np.ndarray]], device: str = "cpu", exact_qdq=False
) -> Iterator[dict[str, np.ndarray]]:
    """Per batch, {name: value} of ``names`` (graph inputs come from the feed)."""
    inputs = {i.name for i in model.graph.input}
    wanted = sorted(set(names) - inputs)
    where = "the Q/DQ model" if exact_qdq else "the FP32 model"
    sess = session(with_outputs(model, wanted, drop_shapes=True), device=device, where=where, exact_qdq=exact_qdq)
    for feed in feeds:
        yield {**feed, **dict(zip(wanted, sess.run(wanted, feed)))}


def rows(
    fp32: onnx.ModelProto,
    layers: list[Layer],
    feeds: list[dict[str, np.ndarray]],
    qdq: onnx.ModelProto | None = None,
    limit=lambda layer, k: 1024,
    seed: int = 0,
    device: str = "cpu",
) -> Iterator[dict[str, tuple[np.ndarray, np.ndarray | None]]]:
    """Per batch, {layer node: (float rows [G, M, K], quantized rows or None)}."""
    q_names = quantized_inputs(qdq, layers) if qdq is not None else {}
    runs = tensors(fp32, [layer.input for layer in layers], feeds, device)
    q_runs = tensors(qdq, list(q_names.values()), feeds, device, exact_qdq=True) if qdq is not None else None
    for b, got in enumerate(runs):
        got_q = next(q_runs) if q_runs is not None else {}
        out = {}
        for i, layer in enumerate(layers):
            x = got[layer.input]
            k = x.shape[-1] if layer.op != "Conv" else int(x.shape[1] // layer.groups * np.prod(layer.kernel))
            pick = positions(layer, x.shape, limit(layer, k), seed * 1_000_003 + b * 7919 + i)
            xq = got_q.get(q_names.get(layer.node))
            out[layer.node] = (patches(layer, x, pick), None if xq is None else patches(layer, xq, pick))
        yield out
