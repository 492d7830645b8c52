"""One ONNX Runtime session that evaluates any choice of layers kept in float.

Built from the full Q/DQ export (TensorRT placement). Each quantized layer *unit* (a Conv,
ConvTranspose, Gemm or MatMul, together with the residual ``Add`` TensorRT fuses into it)
gets a boolean graph input; each of the unit's quantized inputs becomes
``Where(switch, dequantized, float)``. ``Where`` selects, it does not compute, so one
configuration's outputs are those of the Q/DQ model exported with those layers excluded, up
to float rounding where ONNX Runtime fuses the two graphs differently (tests check this
against ``export_qdq(..., exclude_nodes=...)``). One session, many configurations: no
re-export and no new session per evaluation. ``fallback``'s verdict comes from validating the
real exported model, not from this session.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import TensorProto, helper

from calibkit.errors import CalibkitError
from calibkit.graph import forms as graph_forms
from calibkit.outputs.scratch import scratch
from calibkit.qdq import export as qdq
from calibkit.qdq import placement
from calibkit.qdq import post as qdq_post

SWITCH_PREFIX = "calibkit_int8_"


@dataclass(frozen=True)
class Unit:
    """A layer as TensorRT fuses it: its compute node and the residual Add joined to it."""

    name: str  # the compute node's name
    op_type: str
    nodes: tuple[str, ...]  # ONNX node names (compute node first): --exclude-nodes / --keep-fp16
    tensors: tuple[str, ...]  # float activations quantized on its inputs


@dataclass
class Switchable:
    model: onnx.ModelProto
    units: list[Unit]
    fingerprint: str

    def switches(self, kept: set[int] | frozenset[int]) -> dict:
        """The switch feed: every unit quantized except those in ``kept`` (indices)."""
        import numpy as np

        return {switch_name(i): np.array(i not in kept) for i in range(len(self.units))}


def switch_name(i: int) -> str:
    return f"{SWITCH_PREFIX}{i}"


def named_float(model: onnx.ModelProto) -> onnx.ModelProto:
    """The float graph as ``export_qdq`` names it (Constant weights folded, opset >= 13, every
    node named); node names here are the names exclusions use."""
    prepared, _ = graph_forms.prepare(model)
    return qdq.name_nodes(prepared)


def _joined_conv(add: onnx.NodeProto, skip: str, prod: dict[str, onnx.NodeProto]) -> str | None:
    other = add.input[1] if add.input[0] == skip else add.input[0]
    node = prod.get(other)
    while node is not None and node.op_type in placement.RESIDUAL_PASS_THROUGH:
        node = prod.get(node.input[0])
    return node.name if node is not None else None


def units_of(named: onnx.ModelProto, amax: dict[str, float]) -> list[Unit]:
    """The quantized layer units of the TensorRT placement, in graph order."""
    needed = set(qdq.needed_activations(named, placement.COMPUTE_OPS))
    prod = {o: n for n in named.graph.node for o in n.output}
    joins: dict[str, list[tuple[str, str]]] = {}
    for add_name, skip in qdq_post.residual_inputs(named, amax).items():
        add = next(n for n in named.graph.node if n.name == add_name)
        conv = _joined_conv(add, skip, prod)
        if conv is not None:
            joins.setdefault(conv, []).append((add_name, skip))
    units = []
    for node in named.graph.node:
        if node.op_type not in placement.COMPUTE_OPS:
            continue
        tensors = [t for t in placement.activation_inputs(node) if t in needed]
        if not tensors:
            continue  # no activation input to quantize (e.g. MatMul of two weights)
        extra = joins.get(node.name, [])
        units.append(
            Unit(node.name, node.op_type, (node.name, *[a for a, _ in extra]), tuple(tensors + [s for _, s in extra]))
        )
    return units


def build(model: onnx.ModelProto, amax: dict[str, float]) -> Switchable:
    """The switchable model of ``model`` under the scales ``amax``."""
    named = named_float(model)
    units = units_of(named, amax)
    if not units:
        raise CalibkitError(
            "the model has no quantizable layer (Conv, ConvTranspose, Gemm or MatMul on an activation); nothing to rank"
        )
    with scratch("switch") as tmp:
        path = qdq.export_qdq(named, amax, Path(tmp) / "full.qdq.onnx", placement="trt")
        full = onnx.load(str(path))
    return Switchable(_wire(full, named, units), units, _fingerprint(named, amax))


def _wire(full: onnx.ModelProto, named: onnx.ModelProto, units: list[Unit]) -> onnx.ModelProto:
    g = full.graph
    float_nodes = {n.name: n for n in named.graph.node}
    float_inits = {i.name: i for i in named.graph.initializer}
    have = {i.name for i in g.initializer}
    unit_of = {node: i for i, u in enumerate(units) for node in u.nodes}
    before: dict[str, list[onnx.NodeProto]] = {}
    for node in g.node:
        i = unit_of.get(node.name)
        if i is None:
            continue
        original = float_nodes[node.name]
        for k, (q_in, f_in) in enumerate(zip(node.input, original.input)):
            if q_in == f_in or not q_in:
                continue
            if f_in in float_inits and f_in not in have:  # the float weight ORT replaced
                g.initializer.append(float_inits[f_in])
                have.add(f_in)
            out = f"{q_in}__calibkit_switch_{i}_{k}"
            before.setdefault(node.name, []).append(
                helper.make_node("Where", [switch_name(i), q_in, f_in], [out], name=f"{node.name}__calibkit_switch_{k}")
            )
            node.input[k] = out
    order = [m for n in g.node for m in [*before.get(n.name, []), n]]
    del g.node[:]
    g.node.extend(order)
    for i in range(len(units)):
        g.input.append(helper.make_tensor_value_info(switch_name(i), TensorProto.BOOL, []))
    return full


def _fingerprint(named: onnx.ModelProto, amax: dict[str, float]) -> str:
    h = hashlib.sha256(named.SerializeToString(deterministic=True))
    for k in sorted(amax):
        h.update(f"{k}\0{float(amax[k])!r}\n".encode())
    return h.hexdigest()[:16]
