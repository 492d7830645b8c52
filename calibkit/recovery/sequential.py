"""One Q/DQ session for a whole topological pass of weight recovery.

The model is exported to Q/DQ once; then every recovered layer's (dequantized) weight and its
bias become graph inputs of that model, so a layer's new weights are seen by the next run
without another export. Step ``i`` runs, over the calibration batches, only the part of the
graph that layer ``i``'s input depends on (its prefix: on a chain, half the model on average),
and reads that input at the positions sampled from the FP32 run (gather.py), done once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import calibkit.recovery.gather as gather
import calibkit.recovery.rounding as rounding
from calibkit.outputs.scratch import scratch
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


def prefix(model: onnx.ModelProto, output: str) -> onnx.ModelProto:
    """The part of ``model`` that ``output`` depends on, with ``output`` as its only output
    (outer-scope names read inside If/Loop bodies count as dependencies)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    needed, keep, stack = set(), set(), [output]
    while stack:
        t = stack.pop()
        if t in needed:
            continue
        needed.add(t)
        node = producer.get(t)
        if node is None or id(node) in keep:
            continue
        keep.add(id(node))
        stack.extend(i for i in node.input if i)
        for a in node.attribute:
            for g in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
                stack.extend(i for n in g.node for i in n.input if i)
    g = model.graph
    graph = helper.make_graph(
        [n for n in g.node if id(n) in keep],
        g.name,
        [i for i in g.input if i.name in needed],
        [onnx.ValueInfoProto(name=output)],
        [i for i in g.initializer if i.name in needed],
    )
    out = helper.make_model(graph, opset_imports=model.opset_import)
    out.ir_version = model.ir_version
    return out


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
        with scratch("recover") as tmp:
            qdq = onnx.load(str(export_qdq(model, amax, Path(tmp) / "recover.qdq.onnx")))
        self.q_inputs = gather.quantized_inputs(qdq, layers)
        wired = rewire(qdq, layers, self.shapes, channels)
        graph_inputs = {i.name for i in wired.graph.input}
        self.q_fetch = {
            layer.node: self.q_inputs[layer.node]
            for layer in layers
            if self.q_inputs.get(layer.node) not in graph_inputs
        }
        self.wired = wired
        # the FP32 rows, once: [batch][layer] -> (positions, rows)
        self.fp_rows: list[list[tuple[np.ndarray, np.ndarray]]] = []
        budget = opts.rows_budget
        seed = opts.seed
        for b, got in enumerate(gather.tensors(model, [layer.input for layer in layers], feeds, device)):
            per = []
            for i, layer in enumerate(layers):
                x = got[layer.input]
                k = self.weights[i].shape[2]
                pick = gather.positions_for(layer, x.shape, gather.row_limit(k, budget), seed, b, i)
                per.append((pick, patches(layer, x, pick)))
            self.fp_rows.append(per)

    def _raw(self, i: int, v: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(weight_from_matrix(self.layers[i], v, self.shapes[i]), dtype=np.float32)

    def moments(self, i: int) -> Moments:
        layer = self.layers[i]
        w = self.weights[i]
        m = Moments(w.shape[0], w.shape[2])
        fetch = self.q_fetch.get(layer.node)
        sess, names = None, set()
        if fetch is not None:
            sess = session(prefix(self.wired, fetch), device=self.device, where="the Q/DQ model", exact_qdq=True)
            names = {i.name for i in sess.get_inputs()}
        for b, feed in enumerate(self.feeds):
            if sess is None:
                xq = feed[self.q_inputs[layer.node]]
            else:
                xq = sess.run([fetch], {k: v for k, v in {**feed, **self.params}.items() if k in names})[0]
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
        self.fp_rows = []
