"""Evaluate a configuration by running only the graph its switches change.

A configuration differs from one of two *bases* (every unit in float, every unit in INT8) in
a few units. Nothing upstream of those units' switches changes, so the tensors that cross into
the changed part (the *cut*) are the base run's values: they are computed once per base, with
single-threaded sessions as every evaluation uses, kept on disk (memory-mapped by each worker),
and each configuration runs only the nodes reachable from its changed switches, plus the Q/DQ
nodes that feed them (so the cut carries float tensors, not their quantized copies). Outputs the
changed part does not reach are the base's. Sensitivity's single-unit configurations run, on
average, the downstream half of the graph.

Used only with local workers (a Ray actor on another host cannot read this host's disk) and
only where the cut fits a disk budget; otherwise every configuration is a full run. A
configuration's path (full or downstream) depends on the configuration alone, never on the
worker that runs it, so results stay independent of the number of workers.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from calibkit.outputs.scratch import make as scratch_folder
from calibkit.outputs.scratch import release
from calibkit.sensitivity.switch import SWITCH_PREFIX, switch_name

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
MAX_FRACTION = 0.8  # above this share of the nodes a full run is as cheap
BUDGET_BYTES = 4 << 30  # disk for both bases' cut tensors


class Cone:
    """The part of the switchable graph each set of changed units reaches."""

    def __init__(self, model: onnx.ModelProto, n_units: int):
        g = model.graph
        self.model = model
        self.n_units = n_units
        self.nodes = list(g.node)
        self.inits = {i.name for i in g.initializer}
        self.outputs = [o.name for o in g.output]
        self.inputs = {i.name: i for i in g.input if not i.name.startswith(SWITCH_PREFIX)}
        self.consumers: dict[str, list[int]] = {}
        self.producer: dict[str, int] = {}
        for i, n in enumerate(self.nodes):
            for t in n.input:
                if t:
                    self.consumers.setdefault(t, []).append(i)
            for t in n.output:
                self.producer[t] = i

    def nodes_for(self, changed: frozenset[int]) -> list[int]:
        """Indices (graph order) of the nodes reachable from ``changed``'s switches, with the
        Q/DQ chains feeding them."""
        seen: set[int] = set()
        todo = [switch_name(u) for u in changed]
        while todo:
            for i in self.consumers.get(todo.pop(), ()):
                if i not in seen:
                    seen.add(i)
                    todo.extend(self.nodes[i].output)
        back = list(seen)
        while back:
            for t in self.nodes[back.pop()].input:
                j = self.producer.get(t)
                if j is not None and j not in seen and self.nodes[j].op_type in QDQ_OPS:
                    seen.add(j)
                    back.append(j)
        return sorted(seen)

    def cut(self, idx: list[int]) -> list[str]:
        """Tensors the nodes ``idx`` read but do not produce (no weights, no switches); graph
        inputs among them come from the feed."""
        made = {t for i in idx for t in self.nodes[i].output}
        out: dict[str, None] = {}
        for i in idx:
            for t in self.nodes[i].input:
                if t and t not in made and t not in self.inits and not t.startswith(SWITCH_PREFIX):
                    out[t] = None
        return list(out)

    def fraction(self, idx: list[int]) -> float:
        return len(idx) / max(1, len(self.nodes))

    def submodel(self, idx: list[int], cut: list[str], dtypes: dict[str, np.dtype]) -> onnx.ModelProto:
        g = self.model.graph
        nodes = [self.nodes[i] for i in idx]
        used = {t for n in nodes for t in n.input}
        made = {t for n in nodes for t in n.output}
        inputs = [
            self.inputs[t]
            if t in self.inputs
            else helper.make_tensor_value_info(t, helper.np_dtype_to_tensor_dtype(dtypes[t]), None)
            for t in cut
        ]
        inputs += [i for i in g.input if i.name.startswith(SWITCH_PREFIX) and i.name in used]
        outputs = [o for o in g.output if o.name in made]
        graph = helper.make_graph(nodes, "downstream", inputs, outputs, [i for i in g.initializer if i.name in used])
        m = helper.make_model(graph, opset_imports=list(self.model.opset_import), ir_version=self.model.ir_version)
        m.functions.extend(self.model.functions)
        return m


class Bases:
    """The cut tensors and outputs of the two base configurations, per batch, on disk."""

    def __init__(self, folder: Path, tensors: list[str], n_batches: int):
        self.folder, self.tensors, self.n_batches = folder, tensors, n_batches
        self.index = {t: k for k, t in enumerate(tensors)}

    def path(self, base: str, batch: int, tensor: str) -> Path:
        return self.folder / f"{base}-{batch}-{self.index[tensor]}.npy"

    def load(self, base: str, batch: int, tensor: str) -> np.ndarray:
        return np.load(self.path(base, batch, tensor), mmap_mode="r")

    def dtype(self, tensor: str) -> np.dtype:
        return self.load("int8", 0, tensor).dtype


def base_of(kept: frozenset[int], n_units: int) -> tuple[str, frozenset[int]]:
    """The base closer to ``kept`` and the units that differ from it."""
    if len(kept) * 2 > n_units:
        return "float", frozenset(range(n_units)) - kept
    return "int8", kept


def write_bases(model: onnx.ModelProto, n_units: int, feeds: list[dict], budget: int | None = None) -> Bases | None:
    """Run both bases over ``feeds`` exposing every tensor a single-unit cut needs (a larger
    changed set's cut is a subset of their union); None when they exceed ``budget`` bytes."""
    from calibkit.sessions import session

    budget = BUDGET_BYTES if budget is None else budget
    cone = Cone(model, n_units)
    tensors: dict[str, None] = {}
    for u in range(n_units):
        idx = cone.nodes_for(frozenset([u]))
        if cone.fraction(idx) <= MAX_FRACTION:
            tensors.update(dict.fromkeys(cone.cut(idx)))
    names = [t for t in tensors if t not in cone.outputs and t not in cone.inputs] + cone.outputs
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    have = {o.name for o in exposed.graph.output}
    exposed.graph.output.extend(onnx.ValueInfoProto(name=t) for t in names if t not in have)
    sess = session(exposed, device="cpu", threads=1, where="the switchable INT8 model", exact_qdq=True)
    folder = scratch_folder("downstream")
    bases = Bases(folder, names, len(feeds))
    written = 0
    try:
        for base, on in (("float", False), ("int8", True)):
            switches = {switch_name(u): np.array(on) for u in range(n_units)}
            for b, feed in enumerate(feeds):
                for t, v in zip(names, sess.run(names, {**feed, **switches})):
                    written += v.nbytes
                    if written > budget:
                        raise _OverBudget
                    np.save(bases.path(base, b, t), v)
    except _OverBudget:
        release(folder)
        return None
    return bases


class _OverBudget(Exception):
    pass


class Runner:
    """Worker side: evaluates configurations downstream-only where that pays."""

    def __init__(self, model: onnx.ModelProto, n_units: int, bases: Bases, cache_size: int = 2):
        self.cone = Cone(model, n_units)
        self.bases = bases
        self.n_units = n_units
        self._sessions: OrderedDict[frozenset[int], tuple] = OrderedDict()
        self._cache_size = cache_size

    def plan(self, kept: frozenset[int]):
        """(base, sub-session, cut, outputs it makes) or None for a full run."""
        base, changed = base_of(kept, self.n_units)
        if not changed:
            return None
        if changed in self._sessions:
            self._sessions.move_to_end(changed)
            return (base, *self._sessions[changed])
        idx = self.cone.nodes_for(changed)
        cut = self.cone.cut(idx)
        if self.cone.fraction(idx) > MAX_FRACTION or any(
            t not in self.bases.index and t not in self.cone.inputs for t in cut
        ):
            return None
        from calibkit.sessions import session

        sub = self.cone.submodel(idx, cut, {t: self.bases.dtype(t) for t in cut if t not in self.cone.inputs})
        sess = session(
            sub, device="cpu", threads=1, where="the switchable INT8 model (downstream part)", exact_qdq=True
        )
        made = [o.name for o in sess.get_outputs()]
        self._sessions[changed] = (sess, cut, made)
        while len(self._sessions) > self._cache_size:
            self._sessions.popitem(last=False)
        return (base, sess, cut, made)

    def run(self, plan, batch: int, given: dict, switches: dict, outputs: list[str]) -> list[np.ndarray]:
        """Outputs of batch ``batch`` (its feed: ``given``) under ``switches``."""
        base, sess, cut, made = plan
        feed = {
            t: given[t] if t in self.cone.inputs else np.ascontiguousarray(self.bases.load(base, batch, t)) for t in cut
        }
        used = {i.name for i in sess.get_inputs()}
        feed.update({k: v for k, v in switches.items() if k in used})
        got = dict(zip(made, sess.run(made, feed)))
        return [got[o] if o in got else np.asarray(self.bases.load(base, batch, o)) for o in outputs]
