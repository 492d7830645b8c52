"""Writing recovered weights and biases into a model, in place, one layer at a time.

Weights become ``s * q`` in float32: the rounded integers times their per-channel scales, so
any quantizer that recomputes per-channel scales from max |w| (ONNX Runtime's, TensorRT's)
writes exactly ``q``. An initializer another node also reads is copied first, so nothing
outside the layer changes. A Conv or Gemm without a bias gets one; a MatMul's bias is the
constant of the Add after it (layers.find).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from calibkit.recovery.layers import Layer


class Editor:
    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.inits = {i.name: i for i in model.graph.initializer}
        self.nodes = {n.name: n for n in model.graph.node}
        self.uses: dict[str, int] = {}
        for n in model.graph.node:
            for i in n.input:
                self.uses[i] = self.uses.get(i, 0) + 1
        for o in model.graph.output:
            self.uses[o.name] = self.uses.get(o.name, 0) + 1

    def array(self, name: str) -> np.ndarray:
        return numpy_helper.to_array(self.inits[name])

    def _own(self, node_name: str, slot: int, name: str) -> str:
        """The initializer at ``slot`` of the node, copied under a new name if shared."""
        if self.uses.get(name, 0) <= 1:
            return name
        new = f"{name}.{node_name}"
        t = numpy_helper.from_array(self.array(name), new)
        self.model.graph.initializer.append(t)
        self.inits[new] = self.model.graph.initializer[-1]
        self.uses[name] -= 1
        self.uses[new] = 1
        self.nodes[node_name].input[slot] = new
        return new

    def _put(self, name: str, value: np.ndarray) -> None:
        self.inits[name].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(value), name))

    def set_weight(self, layer: Layer, value: np.ndarray) -> None:
        name = self._own(layer.node, 1, self.nodes[layer.node].input[1])
        self._put(name, value.astype(self.array(name).dtype))

    def add_bias(self, layer: Layer, shift: np.ndarray) -> str | None:
        """Adds ``shift`` (one value per output channel) to the layer's bias; returns the
        bias initializer's name, or None when the layer has nowhere to put one (a MatMul
        without its Add)."""
        node = self.nodes[layer.node]
        if layer.bias is None:
            if layer.op == "MatMul":
                return None
            name = f"{layer.node}.bias"
            self.model.graph.initializer.append(numpy_helper.from_array(shift.astype(np.float32), name))
            self.inits[name] = self.model.graph.initializer[-1]
            while len(node.input) < 2:
                node.input.append("")
            if len(node.input) == 2:
                node.input.append(name)
            else:
                node.input[2] = name
            self.uses[name] = 1
            return name
        owner = self.nodes[layer.bias_node]
        slot = list(owner.input).index(layer.bias)
        name = self._own(layer.bias_node, slot, owner.input[slot])
        old = self.array(name)
        self._put(name, (old.astype(np.float64) + shift).astype(old.dtype))  # a [1] or scalar C widens to [N]
        return name
