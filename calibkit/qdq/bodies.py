"""Q/DQ inside the bodies of If, Loop and Scan nodes, at any depth.

ONNX Runtime's ``quantize_static`` (QDQ format) quantizes the top-level graph only. Calibration
inlines an If whose condition does not depend on the samples (calibkit/graph/subgraphs.py), so the
tensors of the branch taken are calibrated under their own names. This pass, run on the
quantizer's output, gives each Conv, ConvTranspose, Gemm and MatMul inside a body the TensorRT
placement: a Q/DQ pair on each float activation input (the same inputs ``needed_activations``
lists at top level; outputs left float) and a per-channel symmetric INT8 DequantizeLinear on
each constant weight (an initializer or Constant node of the body or of an enclosing graph),
plus the residual-Add rule of qdq_post. Scales, zero points and rounding come from ORT's own
``quant_utils`` functions with the options ``qdq.export_qdq`` passes ORT, so a tensor gets
the scale it gets at top level. An op with an activation input without a scale (a branch the
calibration data never takes) stays float and is counted. New names are unique in the model.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from calibkit.graph.forms import constant_tensor
from calibkit.graph.subgraphs import subgraphs_of, tensor_types
from calibkit.numerics.formats import INT8 as FORMAT
from calibkit.qdq.placement import ACTIVATION_INPUTS, COMPUTE_OPS, RESIDUAL_WEIGHTED, weight_axis

INT8 = FORMAT.onnx_type
FLOATS = (TensorProto.FLOAT, TensorProto.FLOAT16)
KIND = {"If": "If branches", "Loop": "Loop bodies", "Scan": "Scan bodies"}


@dataclass
class BodyReport:
    quantized: Counter = field(default_factory=Counter)  # container op type -> ops given Q/DQ
    left_float: Counter = field(default_factory=Counter)  # container op type -> ops without scales
    residuals: int = 0

    def notes(self) -> list[str]:
        out = [f"{n} ops inside {KIND.get(k, k + ' bodies')} quantized" for k, n in sorted(self.quantized.items())]
        out += [
            f"{n} ops inside {KIND.get(k, k + ' bodies')} left in float: not calibrated"
            for k, n in sorted(self.left_float.items())
        ]
        if self.residuals:
            out.append(f"{self.residuals} residual Add inputs inside bodies quantized (Conv+Add fusion)")
        return out


def bodies(graph: onnx.GraphProto, outer: tuple = ()):
    """(container op type, body, enclosing graphs outermost first) for every body, deepest first."""
    for node in graph.node:
        for _, body in subgraphs_of(node):
            yield from bodies(body, (*outer, graph))
            yield node.op_type, body, (*outer, graph)


def body_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for _, body, _ in bodies(model.graph) for n in body.node]


def _all_names(model: onnx.ModelProto) -> set[str]:
    names: set[str] = set()
    for g in [model.graph, *(b for _, b, _ in bodies(model.graph))]:
        names.update(i.name for i in [*g.initializer, *g.input, *g.output])
        for n in g.node:
            names.add(n.name)
            names.update(n.output)
    return names


class _Names:
    def __init__(self, model: onnx.ModelProto) -> None:
        self.taken = _all_names(model)

    def fresh(self, base: str) -> str:
        name, k = base, 0
        while name in self.taken:
            k += 1
            name = f"{base}_{k}"
        self.taken.add(name)
        return name


def name_body_nodes(model: onnx.ModelProto) -> None:
    """Give every unnamed (or duplicate-named) node inside a body a unique name, in place."""
    names = _Names(model)
    seen = {n.name for n in model.graph.node}
    for _, body, _ in bodies(model.graph):
        for node in body.node:
            if not node.name or node.name in seen:
                node.name = names.fresh(f"{node.op_type}_{node.output[0] if node.output else 'body'}")
            seen.add(node.name)


def body_activation_count(model: onnx.ModelProto) -> int:
    """QuantizeLinear nodes on activations inside bodies."""
    return sum(1 for n in body_nodes(model) if n.op_type == "QuantizeLinear")


def _const(name: str, scopes: list[onnx.GraphProto]) -> onnx.TensorProto | None:
    """The constant tensor ``name`` resolves to, innermost scope first; None for an activation."""
    for g in scopes:
        init = next((i for i in g.initializer if i.name == name), None)
        if init is not None:
            return init
        if any(i.name == name for i in g.input):
            return None
        node = next((n for n in g.node if name in n.output), None)
        if node is not None:
            return constant_tensor(node) if node.op_type == "Constant" and node.domain in ("", "ai.onnx") else None
    return None


def _roles(node: onnx.NodeProto, scopes) -> list[tuple[int, str, onnx.TensorProto | None, int | None]]:
    """(input index, 'act' or 'weight', the constant, ORT's default channel axis) per quantized input."""
    if node.op_type == "MatMul":
        out = []
        for i in ACTIVATION_INPUTS["MatMul"]:
            t = _const(node.input[i], scopes)
            out.append((i, "act" if t is None else "weight", t, weight_axis(node)))
        return out
    if len(node.input) < 2 or _const(node.input[0], scopes) is not None:
        return []
    w = _const(node.input[1], scopes)
    axis = weight_axis(node)
    return [(0, "act", None, None), (1, "act" if w is None else "weight", w, axis)]


class _Quantizer:
    def __init__(self, model, amax, ops, exclude, data_dir) -> None:
        from onnxruntime.quantization.calibrate import TensorsData

        from calibkit.artifacts import tensors_data as ort_tensors

        self.types = tensor_types(model)
        self.names = _Names(model)
        self.amax = amax
        self.ranges = TensorsData.from_dict(ort_tensors.tensors_data_dict(amax)).data if amax else {}
        self.ops = set(ops)
        self.exclude = re.compile(exclude) if exclude else None
        self.data_dir = str(data_dir) if data_dir else ""
        self.report = BodyReport()
        self.replaced: set[str] = set()

    def excluded(self, node: onnx.NodeProto) -> bool:
        rx = self.exclude
        return bool(rx and (rx.search(node.name) or (node.output and rx.search(node.output[0]))))

    def activation_pair(self, t: str, inits: list, nodes: list) -> str:
        """Q/DQ on activation ``t`` with ORT's activation parameters (symmetric INT8)."""
        from onnxruntime.quantization.quant_utils import compute_scale_zp, get_qmin_qmax_for_qType

        from calibkit.qdq.post import fp16_scale

        qmin, qmax = get_qmin_qmax_for_qType(INT8, reduce_range=False, symmetric=True)
        rmin, rmax = self.ranges[t].range_value
        zp, scale = compute_scale_zp(rmin, rmax, qmin, qmax, True, None)
        zp, scale = zp.squeeze(), scale.squeeze()
        if self.types.get(t) == TensorProto.FLOAT16:
            scale = fp16_scale(scale)
        s, z = self.names.fresh(f"{t}_scale"), self.names.fresh(f"{t}_zero_point")
        stype = TensorProto.FLOAT16 if scale.dtype == np.float16 else TensorProto.FLOAT
        inits += [
            helper.make_tensor(z, INT8, zp.shape, zp.ravel().tolist()),
            helper.make_tensor(s, stype, scale.shape, scale.ravel().tolist()),
        ]
        q, dq = self.names.fresh(f"{t}_QuantizeLinear_Output"), self.names.fresh(f"{t}_DequantizeLinear_Output")
        nodes += [
            helper.make_node("QuantizeLinear", [t, s, z], [q], self.names.fresh(f"{t}_QuantizeLinear")),
            helper.make_node("DequantizeLinear", [q, s, z], [dq], self.names.fresh(f"{t}_DequantizeLinear")),
        ]
        return dq

    def weight_dq(self, w: onnx.TensorProto, axis: int, inits: list, nodes: list) -> str:
        """INT8 weight + DequantizeLinear, per channel on ``axis`` (per tensor where out of range), as ORT."""
        from onnxruntime.quantization.quant_utils import (
            compute_data_quant_params,
            normalize_axis,
            quantize_onnx_initializer,
        )

        data = numpy_helper.to_array(w, self.data_dir)
        ok, axis = normalize_axis(axis, data.ndim)
        if ok:
            pairs = [
                compute_data_quant_params(
                    data.take(c, axis).ravel(), INT8, True, reduce_range=False, min_real_range=None
                )
                for c in range(data.shape[axis])
            ]
            zp, scale = np.asarray([p[0] for p in pairs]), np.asarray([p[1] for p in pairs])
        else:
            axis = None
            zp, scale = compute_data_quant_params(data.ravel(), INT8, True, reduce_range=False, min_real_range=None)
        src = numpy_helper.from_array(data, w.name)
        qw = quantize_onnx_initializer(
            src, INT8, zp, scale, axis, quant_weight_name=self.names.fresh(f"{w.name}_quantized")
        )
        s, z = self.names.fresh(f"{w.name}_scale"), self.names.fresh(f"{w.name}_zero_point")
        stype = TensorProto.FLOAT16 if scale.dtype == np.float16 else TensorProto.FLOAT
        inits += [
            qw,
            helper.make_tensor(z, INT8, zp.shape, zp.ravel().tolist()),
            helper.make_tensor(s, stype, scale.shape, scale.ravel().tolist()),
        ]
        dq = self.names.fresh(f"{w.name}_DequantizeLinear_Output")
        nodes.append(
            helper.make_node(
                "DequantizeLinear", [qw.name, s, z], [dq], self.names.fresh(f"{w.name}_DequantizeLinear"), axis=axis
            )
        )
        self.replaced.add(w.name)
        return dq

    def body(self, kind: str, g: onnx.GraphProto, outer: tuple) -> None:
        scopes = [g, *reversed(outer)]
        before: dict[int, list[onnx.NodeProto]] = {}
        inits: list[onnx.TensorProto] = []
        act_dq: dict[str, str] = {}
        w_dq: dict[tuple[str, int | None], str] = {}
        kept_float = {n.name for n in g.node if self.excluded(n)}  # Adds too: no residual join
        for idx, node in enumerate(g.node):
            if node.op_type not in self.ops or node.name in kept_float:
                if node.op_type in RESIDUAL_WEIGHTED:
                    kept_float.add(node.name)
                continue
            roles = _roles(node, scopes)
            acts = [node.input[i] for i, role, _, _ in roles if role == "act"]
            weights_ok = all(t.data_type in FLOATS for _, role, t, _ in roles if role == "weight")
            if not acts or not weights_ok or any(self.types.get(a, TensorProto.FLOAT) not in FLOATS for a in acts):
                kept_float.add(node.name)
                continue
            if any(a not in self.ranges for a in acts):
                self.report.left_float[kind] += 1
                kept_float.add(node.name)
                continue
            new: list[onnx.NodeProto] = []
            for i, role, tensor, axis in roles:
                name = node.input[i]
                if role == "act":
                    act_dq[name] = act_dq.get(name) or self.activation_pair(name, inits, new)
                    node.input[i] = act_dq[name]
                else:
                    key = (name, axis)
                    w_dq[key] = w_dq.get(key) or self.weight_dq(tensor, axis, inits, new)
                    node.input[i] = w_dq[key]
            before[idx] = new
            self.report.quantized[kind] += 1
        if before:
            order = [m for i, n in enumerate(g.node) for m in [*before.get(i, []), n]]
            del g.node[:]
            g.node.extend(order)
            g.initializer.extend(inits)
        self.residuals(g, kept_float)

    def residuals(self, g: onnx.GraphProto, kept_float: set[str]) -> None:
        from calibkit.qdq.post import quantize_residuals, residual_inputs

        wrapped = SimpleNamespace(graph=g)
        joins = residual_inputs(wrapped, {t: a for t, a in self.amax.items() if t in self.ranges}, kept_float)
        for dtype in FLOATS:
            part = {
                a: s
                for a, s in joins.items()
                if (self.types.get(s) == TensorProto.FLOAT16) == (dtype == TensorProto.FLOAT16)
            }
            if part:
                self.report.residuals += quantize_residuals(wrapped, part, self.amax, dtype, fresh=self.names.fresh)


def _drop_unused(model: onnx.ModelProto, candidates: set[str]) -> None:
    """Remove the float weights replaced by INT8 copies that nothing reads any more."""
    graphs = [model.graph, *(b for _, b, _ in bodies(model.graph))]
    used = {i for g in graphs for n in g.node for i in n.input} | {o.name for g in graphs for o in g.output}
    dead = candidates - used
    for g in graphs:
        inputs = {i.name for i in g.input}
        keep = [i for i in g.initializer if i.name not in dead or i.name in inputs]
        if len(keep) != len(g.initializer):
            del g.initializer[:]
            g.initializer.extend(keep)
        nodes = [n for n in g.node if not (n.op_type == "Constant" and n.output[0] in dead)]
        if len(nodes) != len(g.node):
            del g.node[:]
            g.node.extend(nodes)


def quantize_bodies(
    model: onnx.ModelProto, amax: dict[str, float], ops, exclude: str | None = None, data_dir: Path | None = None
) -> BodyReport:
    """Insert Q/DQ for ``ops`` (Conv/ConvTranspose/Gemm/MatMul) in every body of ``model``, in place.
    ``data_dir``: where the model's external weights lie."""
    q = _Quantizer(model, amax, [o for o in ops if o in COMPUTE_OPS], exclude, data_dir)
    if not q.ops:
        return q.report
    for kind, body, outer in list(bodies(model.graph)):  # deepest first: a parent's rebuild copies its bodies
        q.body(kind, body, outer)
    _drop_unused(model, q.replaced)
    return q.report
