"""One Q/DQ session for a whole topological pass of weight recovery.

The model is exported to Q/DQ once; then every recovered layer's (dequantized) weight and its
bias become graph inputs of that model, so a layer's new weights are seen by the next run
without another export or session. Step ``i`` runs the calibration batches and reads the
quantized input of layer ``i`` at the positions sampled from the FP32 run (gather.py), which
was done once at the start.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import calibkit.recovery.gather as gather
import calibkit.recovery.rounding as rounding
from calibkit.graph.model import with_outputs
from calibkit.recovery.layers import Layer, patches, weight_from_matrix, weight_matrix
from calibkit.recovery.stats import Moments
from calibkit.sessions import session


def _wname(i: int) -> str:
    return f"calibkit_recover_w{i}"


def _bname(i: int) -> str:
    return f"calibkit_recover_b{i}"


def rewire(qdq: onnx.ModelProto, layers: list[Layer], shapes: list[tuple], channels: list[int]) -> onnx.ModelProto:
    """A copy of ``qdq`` whose recovered layers read their weight and bias from graph inputs."""
    m = onnx.ModelProto()
    m.CopyFrom(qdq)
    nodes = {n.name: n for n in m.graph.node}
    for i, layer in enumerate(layers):
        node = nodes[layer.node]
        node.input[1] = _wname(i)
        m.graph.input.append(helper.make_tensor_value_info(_wname(i), TensorProto.FLOAT, list(shapes[i])))
        if layer.op == "MatMul" and layer.bias is None:
            continue
        if layer.bias is not None:
            owner = nodes[layer.bias_node]
            slot = list(owner.input).index(layer.bias)
            owner.input[slot] = _bname(i)
        else:
            while len(node.input) < 2:
                node.input.append("")
            if len(node.input) == 2:
                node.input.append(_bname(i))
            else:
                node.input[2] = _bname(i)
        m.graph.input.append(helper.make_tensor_value_info(_bname(i), TensorProto.FLOAT, [channels[i]]))
    return m


class Stepper:
    def __init__(self, model: onnx.ModelProto, amax, layers: list[Layer], feeds, opts, device: str = "cpu") -> None:
        from calibkit.qdq.export import export_qdq

        self.layers, self.feeds, self.device = layers, feeds, device
        inits = {i.name: i for i in model.graph.initializer}
        raw = [numpy_helper.to_array(inits[layer.weight]) for layer in layers]
        self.shapes = [w.shape for w in raw]
        self.weights = [weight_matrix(layer, w) for layer, w in zip(layers, raw)]
        channels = [w.shape[0] * w.shape[1] for w in self.weights]
        self.params: dict[str, np.ndarray] = {}
        for i, (layer, w) in enumerate(zip(layers, self.weights)):
            s = rounding.channel_scales(w)
            self.params[_wname(i)] = self._raw(i, rounding.dequantize(rounding.nearest(w, s), s))
            if layer.bias is not None:
                b = numpy_helper.to_array(inits[layer.bias]).astype(np.float32)
                self.params[_bname(i)] = np.ascontiguousarray(np.broadcast_to(b, (channels[i],)).copy())
            elif layer.op != "MatMul":
                self.params[_bname(i)] = np.zeros(channels[i], dtype=np.float32)
        with tempfile.TemporaryDirectory(prefix="calibkit-recover-") as tmp:
            qdq = onnx.load(str(export_qdq(model, amax, Path(tmp) / "recover.qdq.onnx")))
        self.q_inputs = gather.quantized_inputs(qdq, layers)
        wired = rewire(qdq, layers, self.shapes, channels)
        graph_inputs = {i.name for i in wired.graph.input}
        self.q_fetch = {
            layer.node: self.q_inputs[layer.node]
            for layer in layers
            if self.q_inputs.get(layer.node) not in graph_inputs
        }
        self.sess = session(
            with_outputs(wired, sorted(set(self.q_fetch.values())), drop_shapes=True),
            device=device,
            where="the Q/DQ model",
            exact_qdq=True,
        )
        # the FP32 rows, once: [batch][layer] -> (positions, rows)
        self.fp_rows: list[list[tuple[np.ndarray, np.ndarray]]] = []
        budget = opts.rows_budget
        seed = opts.seed
        for b, got in enumerate(gather.tensors(model, [layer.input for layer in layers], feeds, device)):
            per = []
            for i, layer in enumerate(layers):
                x = got[layer.input]
                k = self.weights[i].shape[2]
                pick = gather.positions_for(layer, x.shape, gather.row_limit(layer, k, budget), seed, b, i)
                per.append((pick, patches(layer, x, pick)))
            self.fp_rows.append(per)

    def _raw(self, i: int, v: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(weight_from_matrix(self.layers[i], v, self.shapes[i]), dtype=np.float32)

    def moments(self, i: int) -> Moments:
        layer = self.layers[i]
        w = self.weights[i]
        m = Moments(w.shape[0], w.shape[2])
        fetch = self.q_fetch.get(layer.node)
        for b, feed in enumerate(self.feeds):
            xq = (
                feed[self.q_inputs[layer.node]] if fetch is None else self.sess.run([fetch], {**feed, **self.params})[0]
            )
            pick, x = self.fp_rows[b][i]
            m.update(x, patches(layer, xq, pick))
        for b in range(len(self.feeds)):  # rows of this layer are not needed again
            self.fp_rows[b][i] = (self.fp_rows[b][i][0], None)
        return m

    def set(self, i: int, v: np.ndarray, shift: np.ndarray | None) -> None:
        self.params[_wname(i)] = self._raw(i, v)
        if shift is not None and _bname(i) in self.params:
            self.params[_bname(i)] = (self.params[_bname(i)].astype(np.float64) + shift).astype(np.float32)

    def __enter__(self) -> Stepper:
        return self

    def __exit__(self, *exc) -> None:
        self.sess = None
        self.fp_rows = []
