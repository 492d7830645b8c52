"""Cross-layer equalization (CLE) of Conv pairs: a pure graph transform (numpy + onnx).

Nagel, van Baalen, Blankevoort, Welling, "Data-Free Quantization Through Weight Equalization and
Bias Correction" (ICCV 2019), section 4.1. Two convolutions joined by a positively homogeneous
function f (f(x / s) = f(x) / s for every s > 0) compute the same thing when output channel i of
the first is divided by s_i and input channel i of the second multiplied by s_i. With
s_i = sqrt(r1_i / r2_i), r1_i the range (max |w|) of the first layer's output channel i and r2_i
the range of the second layer's weights that read channel i, both become sqrt(r1_i * r2_i): the
per-channel ranges even out (depthwise convs and per-tensor weights gain most; the activation
between the layers, whose channel ranges scale with r1, gains too). Chains (conv1 -> conv2 ->
conv3) are swept repeatedly until the scales settle.

:func:`pairs` finds Conv -> [BatchNormalization] -> any run of Relu, LeakyRelu, PRelu (any slope
shape), Clip without upper bound and with min 0 or none, MaxPool (one output), Identity -> Conv, where every
tensor between the two convs is read by one node (Shape/Size readers aside) and is no graph output,
and both convs' weights (and conv1's bias and the BN's parameters) are constants. Groups are
handled on both sides (depthwise included). A pair with nothing in between is found too.
Not supported: Clip with a finite max (ReLU6, the pieces of hard-swish), Sigmoid/Swish/GELU (not
homogeneous), a tensor also read elsewhere (residual branches, Concat), ConvTranspose, Gemm/MatMul.

A BatchNormalization between the convs is kept, not folded: its gamma and beta are divided by s
(conv1 is left alone) and r1 is measured on the BN-folded weight W1 * gamma / sqrt(var + eps),
which is the weight TensorRT quantizes once it has fused the BN into the conv.

:class:`ConstEditor` (also used by :mod:`calibkit.recovery.smoothquant`) edits constants that are
initializers or Constant nodes (Paddle2ONNX writes weights as the latter); a constant also read
elsewhere is copied under a new name before it is edited, so nothing outside the pattern moves.
The input model is never modified; nodes are neither added nor removed.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from calibkit.errors import CalibkitError
from calibkit.graph.forms import constant_tensor

SHAPE_READERS = ("Shape", "Size")  # read only a tensor's shape, which no transform here changes
HOMOGENEOUS = ("Relu", "LeakyRelu", "PRelu", "Clip", "MaxPool", "Identity")
_FLT_MAX = float(np.finfo(np.float32).max)
_FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)


def label(node: onnx.NodeProto, index: int) -> str:
    """A node's name, or ``OpType#index`` for an unnamed node."""
    return node.name or f"{node.op_type}#{index}"


def range_ratio(values: np.ndarray) -> float:
    """How uneven per-channel ranges are: max / median over the channels whose range is not 0
    (1.0 when all are 0)."""
    v = np.asarray(values, np.float64)
    v = v[v > 0]
    return float(v.max() / np.median(v)) if v.size else 1.0


def _subgraph_reads(g: onnx.GraphProto) -> set[str]:
    """Names read by nodes of the subgraphs (If/Loop/Scan bodies) under ``g``."""
    out: set[str] = set()
    for n in g.node:
        for a in n.attribute:
            for sub in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
                out.update(x for m in sub.node for x in m.input)
                out |= _subgraph_reads(sub)
    return out


class ConstEditor:
    """An editable copy of a model, indexed: producers, readers, float constants."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = onnx.ModelProto()
        self.model.CopyFrom(model)
        g = self.model.graph
        self.nodes = list(g.node)
        self.producer = {o: i for i, n in enumerate(self.nodes) for o in n.output if o}
        self.readers: dict[str, list[tuple[int, int]]] = defaultdict(list)  # tensor -> [(node, slot)]
        for i, n in enumerate(self.nodes):
            for k, name in enumerate(n.input):
                if name:
                    self.readers[name].append((i, k))
        self.inputs = {i.name for i in g.input}  # an initializer listed as an input can be fed: not a constant
        self.pinned = {o.name for o in g.output} | self.inputs | _subgraph_reads(g)
        self.inits = {t.name: t for t in g.initializer}
        self.const_nodes = {
            n.output[0]: n for n in self.nodes if n.op_type == "Constant" and n.domain in ("", "ai.onnx")
        }
        self.names = set(self.producer) | set(self.inits) | {i.name for i in g.input}
        self._cache: dict[str, np.ndarray] = {}

    def const(self, name: str) -> np.ndarray | None:
        """The value of float constant ``name`` (None for an activation or a non-float)."""
        if name not in self._cache:
            t = self.inits.get(name)
            if t is None and name in self.const_nodes:
                t = constant_tensor(self.const_nodes[name])
            if t is None or name in self.inputs or t.data_type not in _FLOATS:
                return None
            self._cache[name] = numpy_helper.to_array(t)
        return self._cache[name]

    def attr(self, index: int, name: str, default=None):
        a = next((a for a in self.nodes[index].attribute if a.name == name), None)
        return default if a is None else helper.get_attribute_value(a)

    def sole_reader(self, name: str) -> int | None:
        """The one node that reads activation ``name`` (Shape/Size readers aside); None when
        there are more, none, or the tensor is a graph output or read inside a subgraph."""
        readers = {i for i, _ in self.readers.get(name, []) if self.nodes[i].op_type not in SHAPE_READERS}
        return readers.pop() if len(readers) == 1 and name not in self.pinned else None

    def write(self, index: int, slot: int, value: np.ndarray, tag: str) -> None:
        """Set input ``slot`` of node ``index`` (a constant) to ``value``, in its dtype; a
        constant read anywhere else is copied to a new name (``<name>_<tag>``) first."""
        node = self.nodes[index]
        name = node.input[slot]
        value = np.asarray(value).astype(self.const(name).dtype)
        if self.readers[name] == [(index, slot)] and name not in self.pinned:
            if name in self.inits:
                self.inits[name].CopyFrom(numpy_helper.from_array(value, name))
            else:
                cnode = self.const_nodes[name]
                del cnode.attribute[:]
                cnode.attribute.append(helper.make_attribute("value", numpy_helper.from_array(value, name)))
            for vi in [v for v in self.model.graph.value_info if v.name == name]:  # its shape may change
                self.model.graph.value_info.remove(vi)
        else:
            new, k = f"{name}_{tag}", 1
            while new in self.names:
                new, k = f"{name}_{tag}{k}", k + 1
            self.names.add(new)
            self.model.graph.initializer.append(numpy_helper.from_array(value, new))
            self.inits[new] = self.model.graph.initializer[-1]
            self.readers[name].remove((index, slot))
            self.readers[new] = [(index, slot)]
            node.input[slot] = name = new
        self._cache[name] = value


def along(s: np.ndarray, axis: int) -> np.ndarray:
    """``s`` shaped to broadcast on ``axis`` (negative: counted from the end) of an array."""
    return np.asarray(s, np.float64).reshape((-1,) + (1,) * (-axis - 1))


@dataclass(frozen=True)
class Pair:
    """Two convs CLE can rescale: ``first``'s output channels feed ``second``'s input channels."""

    first: str
    second: str
    channels: int
    between: tuple[str, ...]  # op types between the convs, e.g. ("BatchNormalization", "Relu")
    first_index: int  # node indices (the same in the model and in equalize's copy)
    second_index: int
    bn_index: int | None


def _homogeneous(ed: ConstEditor, i: int) -> bool:
    n = ed.nodes[i]
    if n.op_type == "MaxPool":
        return len([o for o in n.output if o]) == 1
    if n.op_type != "Clip":
        return n.op_type in HOMOGENEOUS
    lo, hi = ed.attr(i, "min", -np.inf), ed.attr(i, "max", np.inf)  # opset < 11: attributes
    for slot in (1, 2):  # opset >= 11: optional constant inputs
        if len(n.input) > slot and n.input[slot]:
            v = ed.const(n.input[slot])
            if v is None or v.size != 1:
                return False
            lo, hi = (float(v.reshape(-1)[0]), hi) if slot == 1 else (lo, float(v.reshape(-1)[0]))
    return (lo == 0 or lo <= -_FLT_MAX) and hi >= _FLT_MAX


def _pair_from(ed: ConstEditor, i: int) -> Pair | None:
    n = ed.nodes[i]
    w1 = ed.const(n.input[1]) if len(n.input) > 1 else None
    if n.op_type != "Conv" or w1 is None or w1.ndim < 3 or ed.const(n.input[0]) is not None:
        return None
    if len(n.input) > 2 and n.input[2] and ed.const(n.input[2]) is None:
        return None
    t, between, bn = n.output[0], [], None
    while (j := ed.sole_reader(t)) is not None and ed.nodes[j].input[0] == t:
        m = ed.nodes[j]
        if m.op_type == "Conv":
            w2 = ed.const(m.input[1]) if len(m.input) > 1 else None
            g2, c = int(ed.attr(j, "group", 1)), w1.shape[0]
            if w2 is None or w2.ndim != w1.ndim or w2.shape[1] * g2 != c or w2.shape[0] % g2:
                return None
            return Pair(label(n, i), label(m, j), c, tuple(between), i, j, bn)
        if m.op_type == "BatchNormalization" and not between and len([o for o in m.output if o]) == 1:
            if any(ed.const(x) is None for x in m.input[1:5]) or ed.attr(j, "training_mode", 0):
                return None
            bn = j
        elif not _homogeneous(ed, j):
            return None
        between.append(m.op_type)
        t = m.output[0]
    return None


def pairs(model: onnx.ModelProto) -> list[Pair]:
    """The Conv pairs :func:`equalize` rescales, in graph order (see the module docstring)."""
    ed = ConstEditor(model)
    return [p for i in range(len(ed.nodes)) if (p := _pair_from(ed, i)) is not None]


def _bn_factor(ed: ConstEditor, j: int) -> np.ndarray:
    gamma, _, _, var = (ed.const(x).astype(np.float64) for x in ed.nodes[j].input[1:5])
    return np.abs(gamma) / np.sqrt(var + float(ed.attr(j, "epsilon", 1e-5)))


def _grouped(ed: ConstEditor, p: Pair) -> tuple[np.ndarray, int]:
    """conv2's weight viewed as [groups, outputs per group, inputs per group, -1] (float64)."""
    w2 = ed.const(ed.nodes[p.second_index].input[1]).astype(np.float64)
    g = int(ed.attr(p.second_index, "group", 1))
    return w2.reshape(g, w2.shape[0] // g, w2.shape[1], -1), g


def _ranges(ed: ConstEditor, p: Pair) -> tuple[np.ndarray, np.ndarray]:
    """(r1, r2): conv1's per-output-channel ranges (BN folded) and conv2's per-input-channel ranges."""
    w1 = ed.const(ed.nodes[p.first_index].input[1])
    r1 = np.abs(w1.astype(np.float64)).reshape(p.channels, -1).max(axis=1)
    if p.bn_index is not None:
        r1 = r1 * _bn_factor(ed, p.bn_index)
    w2, _ = _grouped(ed, p)
    return r1, np.abs(w2).max(axis=(1, 3)).reshape(-1)


def _apply(ed: ConstEditor, p: Pair, s: np.ndarray) -> None:
    """Divide channel i of conv1's output by s_i (through the BN's gamma and beta when there is
    one, else conv1's weight rows and bias) and multiply conv2's input channel i by s_i."""
    owner = p.first_index if p.bn_index is None else p.bn_index
    node = ed.nodes[owner]
    for slot in (1, 2):  # conv: W1 [C, ...], b1 [C]; BN: gamma [C], beta [C]
        if len(node.input) > slot and node.input[slot]:
            v = ed.const(node.input[slot])
            ed.write(owner, slot, v / along(s, -v.ndim), "cle")
    w2, g = _grouped(ed, p)
    shape = ed.const(ed.nodes[p.second_index].input[1]).shape
    ed.write(p.second_index, 1, (w2 * s.reshape(g, 1, -1, 1)).reshape(shape), "cle")


def equalize(model: onnx.ModelProto, iterations: int = 20, tol: float = 1e-4) -> tuple[onnx.ModelProto, list[dict]]:
    """A new model with every :func:`pairs` pair equalized, and one record per pair.

    Each sweep rescales every pair by s_i = sqrt(r1_i / r2_i) from the current weights; sweeps
    stop once no scale moves by more than ``tol`` (relative) or after ``iterations`` sweeps (a
    lone pair settles in one, chains take a few). A record: ``first``, ``second`` (node names),
    ``channels``, ``between``, ``range_ratio_before``/``_after`` (the larger of
    :func:`range_ratio` of r1 and of r2: 1.0 is perfectly even), ``first_range_ratio_*`` and
    ``second_range_ratio_*`` (each side's), ``scale_min``/``scale_max`` (overall s) and
    ``sweeps``. Zero-range channels keep s = 1."""
    if iterations < 1:
        raise CalibkitError(f"equalize: iterations must be >= 1, got {iterations}")
    ed = ConstEditor(model)
    found = [p for i in range(len(ed.nodes)) if (p := _pair_from(ed, i)) is not None]
    before = [_ranges(ed, p) for p in found]
    total = [np.ones(p.channels) for p in found]
    sweeps = 0
    while found and sweeps < iterations:
        sweeps += 1
        moved = 0.0
        for k, p in enumerate(found):
            r1, r2 = _ranges(ed, p)
            s = np.ones(p.channels)
            ok = (r1 > 0) & (r2 > 0)
            s[ok] = np.clip(np.sqrt(r1[ok] / r2[ok]), 1e-8, 1e8)
            _apply(ed, p, s)
            total[k] *= s
            moved = max(moved, float(np.abs(s - 1).max(initial=0.0)))
        if moved < tol:
            break
    records = []
    for p, (b1, b2), s in zip(found, before, total):
        a1, a2 = _ranges(ed, p)
        records.append(
            {
                "first": p.first,
                "second": p.second,
                "channels": p.channels,
                "between": list(p.between),
                "range_ratio_before": max(range_ratio(b1), range_ratio(b2)),
                "range_ratio_after": max(range_ratio(a1), range_ratio(a2)),
                "first_range_ratio_before": range_ratio(b1),
                "first_range_ratio_after": range_ratio(a1),
                "second_range_ratio_before": range_ratio(b2),
                "second_range_ratio_after": range_ratio(a2),
                "scale_min": float(s.min()),
                "scale_max": float(s.max()),
                "sweeps": sweeps,
            }
        )
    return ed.model, records
