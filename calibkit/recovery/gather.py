"""Rows of the layers' inputs from real runs: the FP32 model and, beside it, the Q/DQ model.

One ONNX Runtime session per model, the wanted tensors exposed as outputs, one batch at a
time. Rows (patches) are sampled at positions fixed by a seed, so row ``i`` of the float and
of the quantized input are the same patch of the same sample.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx

from calibkit.graph.model import with_outputs
from calibkit.recovery.layers import Layer, positions
from calibkit.sessions import session


def quantized_inputs(qdq: onnx.ModelProto, layers: list[Layer]) -> dict[str, str]:
    """{layer node: the tensor it reads in the Q/DQ model} (a DequantizeLinear output when quantized)."""
    by_name = {n.name: n for n in qdq.graph.node}
    return {layer.node: by_name[layer.node].input[0] for layer in layers if layer.node in by_name}


def row_limit(k: int, budget: float) -> int:
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


def positions_for(layer: Layer, shape: tuple[int, ...], limit: int, seed: int, batch: int, index: int) -> np.ndarray:
    """The sampled rows of layer ``index`` in batch ``batch``: fixed by the seed, the same for
    the float and the quantized input."""
    return positions(layer, shape, limit, seed * 1_000_003 + batch * 7919 + index)
