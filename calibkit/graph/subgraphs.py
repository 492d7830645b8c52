"""Float tensors inside ``If``/``Loop``/``Scan`` bodies.

ORT cannot expose a subgraph's tensors as outputs. An ``If`` whose condition does not depend
on the samples (silero's ``If`` on the sample rate ``sr``, a shared 0-d input) takes the same
branch for every run, so it is inlined for collection: the taken branch's nodes move into the
main graph, where its tensors are exposed and calibrated like any other. The condition stays
an output and is checked on every run (``guards``). Everything else inside a body (Loop and
Scan bodies, If branches whose condition depends on the samples, branches not taken) is
listed by name with the reason (``uncalibrated``), never dropped silently.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from calibkit.graph.model import FLOAT_TYPES

SUBGRAPH_OPS = {"If", "Loop", "Scan"}
MAX_DEPTH = 8


def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:
        inferred = model
    types: dict[str, int] = {}

    def walk(g: onnx.GraphProto) -> None:
        for vi in [*g.value_info, *g.input, *g.output]:
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
                types[vi.name] = vi.type.tensor_type.elem_type
        for node in g.node:
            for a in node.attribute:
                for sub in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
                    walk(sub)

    walk(inferred.graph)
    return types


def subgraphs_of(node: onnx.NodeProto) -> list[tuple[str, onnx.GraphProto]]:
    out = []
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            out.append((a.name, a.g))
        elif a.type == onnx.AttributeProto.GRAPHS:
            out.extend((a.name, g) for g in a.graphs)
    return out


def outer_reads(node: onnx.NodeProto) -> set[str]:
    """Names the bodies of ``node`` (at any depth) read from enclosing graphs: its implicit inputs."""
    out: set[str] = set()
    for _, g in subgraphs_of(node):
        local = {i.name for i in g.initializer} | {i.name for i in g.input}
        for n in g.node:
            out.update(i for i in [*n.input, *outer_reads(n)] if i and i not in local)
            local.update(o for o in n.output if o)
    return out


def topo_sort(graph: onnx.GraphProto) -> list[str]:
    """Reorder ``graph``'s nodes (stably) so each comes after the producers of what it reads,
    its bodies' outer reads included (a quantizer sorting by explicit inputs alone can move an
    If before the node whose output its branch reads). Returns the names left unresolved
    (a cycle or a dangling input), with the nodes reading them kept last in their old order."""
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    produced = {o for n in graph.node for o in n.output}
    pending = [(n, [i for i in {*n.input, *outer_reads(n)} if i in produced]) for n in graph.node]
    ordered: list[onnx.NodeProto] = []
    while pending:
        done = [all(i in ready for i in r) for _, r in pending]
        if not any(done):
            break
        for (n, _), d in zip(pending, done):
            if d:
                ordered.append(n)
                ready.update(n.output)
        pending = [x for x, d in zip(pending, done) if not d]
    unresolved = sorted({i for _, r in pending for i in r if i not in ready})
    ordered += [n for n, _ in pending]
    if [id(n) for n in ordered] != [id(n) for n in graph.node]:
        copies = [onnx.NodeProto() for _ in ordered]
        for c, n in zip(copies, ordered):
            c.CopyFrom(n)
        del graph.node[:]
        graph.node.extend(copies)
    return unresolved


def _body_floats(g: onnx.GraphProto, types: dict[str, int], reason: str, out: dict[str, str]) -> None:
    for node in g.node:
        if node.op_type != "Constant":
            for o in node.output:
                if o and types.get(o, TensorProto.FLOAT) in FLOAT_TYPES:
                    out.setdefault(o, reason)
        for attr, sub in subgraphs_of(node):
            _body_floats(
                sub, types, f"inside {node.op_type} {attr} of node {node.name or node.output[0]!r}: not calibrated", out
            )


def uncalibrated(
    model: onnx.ModelProto, types: dict[str, int] | None = None, why: dict[str, str] | None = None
) -> dict[str, str]:
    """{tensor: reason} for every float tensor produced inside a subgraph of ``model``.
    ``why``: node name -> a more specific reason (e.g. the If condition depends on the data)."""
    types = types if types is not None else tensor_types(model)
    out: dict[str, str] = {}
    for node in model.graph.node:
        label = node.name or node.output[0]
        for attr, sub in subgraphs_of(node):
            reason = (why or {}).get(label) or "not calibrated"
            _body_floats(sub, types, f"inside {node.op_type} {attr} of node {label!r}: {reason}", out)
    return out


def _sample_dependent(model: onnx.ModelProto, sampled: set[str]) -> set[str]:
    dep = set(sampled)

    def refs(g: onnx.GraphProto) -> set[str]:
        names = set()
        for n in g.node:
            names.update(n.input)
            for _, sub in subgraphs_of(n):
                names |= refs(sub)
        return names

    for node in model.graph.node:
        used = set(node.input) | set().union(*(refs(g) for _, g in subgraphs_of(node)))
        if used & dep:
            dep.update(o for o in node.output if o)
    return dep


def tensor_names(model: onnx.ModelProto) -> set[str]:
    """Every tensor name of ``model``: inputs, initializers and node outputs, bodies included."""
    return _produced(model.graph)


def _produced(g: onnx.GraphProto) -> set[str]:
    names = {i.name for i in g.initializer} | {i.name for i in g.input}
    for n in g.node:
        names.update(o for o in n.output if o)
        for _, sub in subgraphs_of(n):
            names |= _produced(sub)
    return names


def _inline(model: onnx.ModelProto, node_index: int, take_then: bool) -> onnx.ModelProto | None:
    """The model with the If at ``node_index`` replaced by its taken branch (None on name clashes)."""
    graph = model.graph
    node = graph.node[node_index]
    branch = next(a.g for a in node.attribute if a.name == ("then_branch" if take_then else "else_branch"))
    outside = {i.name for i in graph.initializer} | {i.name for i in graph.input}
    for j, n in enumerate(graph.node):
        if j != node_index:
            outside.update(o for o in n.output if o)
            for _, sub in subgraphs_of(n):
                outside |= _produced(sub)
    if _produced(branch) & outside or branch.sparse_initializer:
        return None
    m = onnx.ModelProto()
    m.CopyFrom(model)
    new_nodes = list(m.graph.node[:node_index]) + list(branch.node)
    for out, bo in zip(node.output, branch.output):
        if out:
            new_nodes.append(
                helper.make_node("Identity", [bo.name], [out], name=f"{node.name or out}__calibkit_inlined_{out}")
            )
    new_nodes += list(m.graph.node[node_index + 1 :])
    del m.graph.node[:]
    m.graph.node.extend(new_nodes)
    m.graph.initializer.extend(branch.initializer)
    m.graph.value_info.extend(branch.value_info)
    return m


def inline_constant_ifs(
    model: onnx.ModelProto, sampled: set[str], evaluate
) -> tuple[onnx.ModelProto, dict[str, bool], dict[str, str]]:
    """Inline every If whose condition does not depend on the samples.

    ``evaluate(model, names)`` runs ``model`` on the first batch and returns those tensors.
    Returns (the model for collection, {condition tensor: its value}, {tensor: reason} of the
    branches not taken)."""
    guards: dict[str, bool] = {}
    skipped: dict[str, str] = {}
    original_types = tensor_types(model)
    for _ in range(MAX_DEPTH):
        dep = _sample_dependent(model, sampled)
        todo = [(i, n) for i, n in enumerate(model.graph.node) if n.op_type == "If" and n.input[0] not in dep]
        if not todo:
            break
        values = evaluate(model, [n.input[0] for _, n in todo])
        changed = False
        for i, node in reversed(todo):  # from the back, so earlier indices stay valid
            cond = bool(values[node.input[0]].reshape(-1)[0]) if values[node.input[0]].size else False
            inlined = _inline(model, i, cond)
            if inlined is None:
                continue
            label = node.name or node.output[0]
            other = next(a.g for a in node.attribute if a.name == ("else_branch" if cond else "then_branch"))
            _body_floats(
                other,
                original_types,
                f"inside the If branch of node {label!r} the calibration data never takes ({node.input[0]} is {cond}): not calibrated",
                skipped,
            )
            guards[node.input[0]] = cond
            model = inlined
            changed = True
        if not changed:
            break
    return model, guards, skipped


def data_dependent_reasons(model: onnx.ModelProto, sampled: set[str]) -> dict[str, str]:
    dep = _sample_dependent(model, sampled)
    return {
        n.name or n.output[0]: "its condition depends on the samples; not calibrated"
        for n in model.graph.node
        if n.op_type == "If" and n.input[0] in dep
    }
