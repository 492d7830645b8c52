"""The ``trt-fused`` placement's decisions: which node gets Q/DQ and by which rule.

The rules themselves are data in calibkit/qdq/placement.py (``FUSED_RULES``, with sources);
this module applies them to a graph. Used by the exporter (nodes a rule keeps in float are
passed to ONNX Runtime's quantizer as excluded; Concat inputs take the Concat output's amax)
and by ``calibkit placement``.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from calibkit.qdq.placement import (
    ATTENTION_BETWEEN,
    ATTENTION_FP8_HEAD,
    ATTENTION_INT8_MAX_SEQ,
    CHANNEL_MULTIPLE,
    COMPUTE_OPS,
    FUSED_NEIGHBOURS,
    FUSED_RULES,
    SMALL_CHANNELS,
    activation_inputs,
)


@dataclass(frozen=True)
class Decision:
    node: str
    op_type: str
    quantized: bool
    rule: str  # a FUSED_RULES name, or "float" (no rule quantizes this op type)
    why: str = ""


def constant_tensors(graph: onnx.GraphProto) -> set[str]:
    """Tensors computed from initializers and Constant nodes only (no graph input upstream)."""
    const = {i.name for i in graph.initializer} - {i.name for i in graph.input}
    for node in graph.node:
        if node.op_type == "Constant" or (node.input and all(not i or i in const for i in node.input)):
            const.update(o for o in node.output if o)
    return const


def _small(channels: int) -> bool:
    return channels < SMALL_CHANNELS and channels % CHANNEL_MULTIPLE != 0


def _static_rows(shape) -> int | None:
    """Product of all but the last dim of a static shape (M of a GEMM), None when unknown."""
    if shape is None or len(shape) < 1 or any(d is None for d in shape[:-1]):
        return None
    rows = 1
    for d in shape[:-1]:
        rows *= d
    return rows


def _shapes(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # shape inference is advice here: unknown shapes decide nothing
        return {}
    out = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        t = vi.type.tensor_type
        if t.HasField("shape"):
            out[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    return out


def _compute(node, inits, const, shapes) -> Decision:
    acts = [i for i in activation_inputs(node) if i not in const]
    if not acts:
        return Decision(node.name, node.op_type, False, "no-constant", "every activation input is a constant")
    w = inits.get(node.input[1]) if len(node.input) > 1 else None
    if node.op_type in ("Conv", "ConvTranspose") and w is not None and len(w.dims) >= 2:
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if node.op_type == "Conv":
            c_out, c_in = w.dims[0], w.dims[1] * group
        else:
            c_in, c_out = w.dims[0], w.dims[1] * group
        if _small(c_in) or _small(c_out):
            return Decision(node.name, node.op_type, False, "small-channels", f"{c_in} -> {c_out} channels")
    if node.op_type in ("Gemm", "MatMul") and w is not None and len(w.dims) == 2:
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0) if node.op_type == "Gemm" else 0
        k, n = (w.dims[1], w.dims[0]) if trans_b else (w.dims[0], w.dims[1])
        if k < SMALL_CHANNELS or n < SMALL_CHANNELS:
            return Decision(node.name, node.op_type, False, "gemv", f"K={k}, N={n}")
        if _static_rows(shapes.get(node.input[0])) == 1:
            return Decision(node.name, node.op_type, False, "gemv", "M=1 (a matrix-vector product)")
    return Decision(node.name, node.op_type, True, "compute-input")


def attention_cores(model: onnx.ModelProto, const: set[str]) -> list[tuple[onnx.NodeProto, onnx.NodeProto]]:
    """(first MatMul, second MatMul) of each attention core: a MatMul of two activations whose
    output reaches a Softmax through scale/mask ops (ATTENTION_BETWEEN), and the Softmax's
    output reaches a second MatMul of two activations (as ModelOpt's find_mha_partitions)."""
    g = model.graph
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in g.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)

    def act_matmul(node) -> bool:
        return node.op_type == "MatMul" and len(node.input) == 2 and not any(i in const for i in node.input)

    def follow(start: str, target: str) -> onnx.NodeProto | None:
        todo, seen = [start], set()
        while todo:
            t = todo.pop()
            if t in seen:
                continue
            seen.add(t)
            for c in consumers.get(t, []):
                if c.op_type == target and (target != "MatMul" or act_matmul(c)):
                    return c
                if c.op_type in ATTENTION_BETWEEN:
                    todo += [o for o in c.output if o]
        return None

    cores = []
    for node in g.node:
        if not act_matmul(node):
            continue
        softmax = follow(node.output[0], "Softmax")
        second = follow(softmax.output[0], "MatMul") if softmax is not None else None
        if second is not None:
            cores.append((node, second))
    return cores


def _attention(model, const, shapes, precision: str) -> dict[str, Decision]:
    """Float decisions for the attention cores the "attention" rule keeps out of INT8/FP8."""
    out: dict[str, Decision] = {}
    for first, second in attention_cores(model, const):
        k = shapes.get(first.input[1])  # K^T: [..., head size, sequence length]
        head, seq = (k[-2], k[-1]) if k is not None and len(k) >= 2 else (None, None)
        why = ""
        if precision == "fp8" and head is not None and not ATTENTION_FP8_HEAD[0] < head <= ATTENTION_FP8_HEAD[1]:
            why = f"head size {head} (FP8 attention kernels take ({ATTENTION_FP8_HEAD[0]}, {ATTENTION_FP8_HEAD[1]}])"
        elif precision != "fp8" and seq is not None and seq > ATTENTION_INT8_MAX_SEQ:
            why = f"sequence length {seq} > {ATTENTION_INT8_MAX_SEQ}"
        if why:
            for node in (first, second):
                out[node.name] = Decision(node.name, node.op_type, False, "attention", why)
    return out


def decide(model: onnx.ModelProto, kept_float: set[str] = frozenset(), precision: str = "int8") -> dict[str, Decision]:
    """{node name: Decision} for every node of the main graph (named nodes: see
    calibkit.qdq.export.name_nodes). ``kept_float``: nodes the user excluded; ``precision``:
    int8 or fp8 (the attention rule differs)."""
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    const = constant_tensors(g)
    shapes = _shapes(model)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in g.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    out: dict[str, Decision] = {}
    attention = _attention(model, const, shapes, precision)
    for node in g.node:
        if node.name in kept_float:
            out[node.name] = Decision(node.name, node.op_type, False, "excluded", "--exclude-nodes / op types")
        elif node.name in attention:
            out[node.name] = attention[node.name]
        elif node.op_type in COMPUTE_OPS:
            out[node.name] = _compute(node, inits, const, shapes)

    _drop_islands(model, out)

    def feeds_quantized(node) -> bool:
        return any(out.get(c.name) and out[c.name].quantized for o in node.output for c in consumers.get(o, []))

    # pooling and Concat next to quantized ops, consumers first (a Concat may feed a pooling)
    for node in reversed(g.node):
        if node.name in out:
            continue
        if node.op_type in FUSED_NEIGHBOURS or node.op_type == "Concat":
            rule = next(r["rule"] for r in FUSED_RULES if node.op_type in r["ops"])
            inputs = [i for i in node.input if i] if node.op_type == "Concat" else node.input[:1]
            if any(i in const for i in inputs):
                out[node.name] = Decision(node.name, node.op_type, False, "no-constant", "a constant input")
            elif feeds_quantized(node):
                out[node.name] = Decision(node.name, node.op_type, True, rule)
            else:
                out[node.name] = Decision(node.name, node.op_type, False, rule, "its output feeds no quantized op")
    return {n.name: out.get(n.name) or Decision(n.name, n.op_type, False, "float") for n in g.node}


def _drop_islands(model: onnx.ModelProto, out: dict[str, Decision]) -> None:
    """Keep in float each quantized compute layer whose nearest compute neighbours, upstream
    and downstream, all stay float (until none is left: dropping one can isolate another)."""
    from calibkit.qdq.index import GraphIndex

    g = GraphIndex(model)
    by_name = {n.name: n for n in g.nodes}
    while True:
        dropped = False
        for name, d in list(out.items()):
            if not d.quantized or d.op_type not in COMPUTE_OPS:
                continue
            node = by_name[name]
            ups = g.neighbours(activation_inputs(node), up=True)
            downs = g.neighbours([o for o in node.output if o], up=False)
            if ups and downs and not any(out.get(n.name) and out[n.name].quantized for n in ups + downs):
                out[name] = Decision(name, d.op_type, False, "no-island", "its compute neighbours all stay float")
                dropped = True
        if not dropped:
            return


def shared_concat_amax(
    model: onnx.ModelProto, decisions: dict[str, Decision], amax: dict[str, float]
) -> dict[str, float]:
    """{Concat input: amax} giving every input of a quantized Concat its output's amax (the
    output's histogram is the exact merge of the inputs' histograms, so its threshold is the
    one shared scale). A tensor read by two Concats keeps the first (the lint reports it)."""
    shared: dict[str, float] = {}
    for node in model.graph.node:
        d = decisions.get(node.name)
        if d is None or not d.quantized or node.op_type != "Concat" or node.output[0] not in amax:
            continue
        for i in node.input:
            if i:
                shared.setdefault(i, amax[node.output[0]])
    return shared


def needed(model: onnx.ModelProto, decisions: dict[str, Decision]) -> list[str]:
    """Activations the ``trt-fused`` placement reads a scale for (Concat outputs included)."""
    const = constant_tensors(model.graph)
    need: list[str] = []
    for node in model.graph.node:
        d = decisions.get(node.name)
        if d is None or not d.quantized:
            continue
        if node.op_type == "Concat":
            names = [*node.input, node.output[0]]
        elif node.op_type in FUSED_NEIGHBOURS:
            names = node.input[:1]
        else:
            names = activation_inputs(node)
        need += [t for t in names if t and t not in const and t not in need]
    return need
