"""An index of a Q/DQ graph (producers, consumers, weights, Q/DQ pairs) shared by the
placement rules (rules.py) and the lint (lint.py)."""

from __future__ import annotations

import onnx
from onnx import numpy_helper

from calibkit.qdq.placement import COMPUTE_OPS, activation_inputs


class GraphIndex:
    def __init__(self, model: onnx.ModelProto) -> None:
        g = model.graph
        self.nodes = list(g.node)
        self.inits = {i.name: i for i in g.initializer}
        # Constant-node values count as weights (some exporters keep every weight in one)
        self.weights = set(self.inits) | {n.output[0] for n in g.node if n.op_type == "Constant" and n.output}
        self.producer = {o: n for n in g.node for o in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in g.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)

    def dq_source(self, name: str) -> onnx.NodeProto | None:
        """The QuantizeLinear behind ``name`` when ``name`` is a DequantizeLinear output."""
        dq = self.producer.get(name)
        if dq is None or dq.op_type != "DequantizeLinear":
            return None
        q = self.producer.get(dq.input[0])
        return q if q is not None and q.op_type == "QuantizeLinear" else None

    def constant(self, name: str):
        """The value of an initializer or a Constant node's output (None: neither, or a kind
        of Constant this does not read)."""
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        node = self.producer.get(name)
        if node is None or node.op_type != "Constant":
            return None
        for a in node.attribute:
            if a.name == "value":
                return numpy_helper.to_array(a.t)
        return None

    def scale(self, node: onnx.NodeProto) -> float | None:
        a = self.constant(node.input[1]) if len(node.input) > 1 else None
        return float(a) if a is not None and a.size == 1 else None

    def quantized(self, node: onnx.NodeProto) -> bool:
        """A compute node reading an activation through a Q/DQ pair."""
        return any(self.dq_source(i) is not None for i in activation_inputs(node))

    def float_name(self, name: str) -> str:
        q = self.dq_source(name)
        return q.input[0] if q is not None else name

    def neighbours(self, start: list[str], up: bool, limit: int = 64) -> list[onnx.NodeProto]:
        """Nearest compute nodes from tensors ``start``, walking through every other op."""
        found, seen, todo = [], set(), list(start)
        while todo and len(seen) < limit:
            t = todo.pop()
            if t in seen:
                continue
            seen.add(t)
            nodes = [self.producer[t]] if up and t in self.producer else [] if up else self.consumers.get(t, [])
            for n in nodes:
                if n.op_type in COMPUTE_OPS:
                    found.append(n)
                elif up:
                    todo += [i for i in n.input if i and i not in self.inits]
                else:
                    todo += [o for o in n.output if o]
        return found
