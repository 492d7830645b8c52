"""Q/DQ ONNX export (explicit quantization: TensorRT 11, ONNX Runtime) from calibkit scales.

The graph surgery is ONNX Runtime's ``quantize_static`` (QDQ format), fed calibkit's ranges
through a ``TensorsData`` JSON (``calibration_cache_path``), so no calibration runs there.
Symmetric INT8, zero point 0, per-tensor activations, per-channel weights, no bias
quantization. Two placements:

- ``trt`` (default): Q/DQ on the inputs of Conv, ConvTranspose, Gemm, MatMul only, outputs
  left in float, BatchNorm/ReLU left for TensorRT to fold. The model TensorRT 11 builds.
  ONNX Runtime runs it as dequantize -> float kernels (exact INT8 emulation).
- ``ort``: outputs and pooling/elementwise ops quantized too, so ONNX Runtime's CPU provider
  fuses the patterns into real INT8 kernels (QLinearConv, QGemm, ...).

Ops inside If/Loop/Scan bodies, which the quantizer leaves alone, get the ``trt`` placement
from calibkit/qdq/bodies.py (with ORT's scale conventions); those without scales stay float.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from pathlib import Path

import onnx

from calibkit.artifacts import tensors_data as ort_tensors
from calibkit.errors import CalibkitError
from calibkit.graph.subgraphs import topo_sort
from calibkit.numerics.formats import INT8, number_format
from calibkit.outputs.scratch import scratch
from calibkit.qdq import rules as qdq_rules
from calibkit.qdq.placement import (
    COMPUTE_OPS,
    ORT_EXTRA_OPS,
    PLACEMENTS,
    TRT_PLACEMENTS,
    activation_inputs,
    quantized_ops,
)

FP16_MIN_OPSET = 19  # QuantizeLinear takes float16 input (and a float16 scale) from opset 19


@contextlib.contextmanager
def _quiet():
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def name_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy where every node has a unique name (ORT excludes nodes by name), in bodies too."""
    from calibkit.qdq.bodies import name_body_nodes

    m = onnx.ModelProto()
    m.CopyFrom(model)
    seen: set[str] = set()
    for i, node in enumerate(m.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)
    name_body_nodes(m)
    return m


def excluded_nodes(model: onnx.ModelProto, pattern: str | None) -> list[str]:
    """Names of nodes (in bodies too) whose name or first output matches ``pattern``."""
    from calibkit.qdq.bodies import body_nodes

    if not pattern:
        return []
    try:
        rx = re.compile(pattern)
    except re.error as exc:
        raise CalibkitError(f"--exclude-nodes {pattern!r} is not a valid regular expression: {exc}") from None
    hits = [
        n.name
        for n in [*model.graph.node, *body_nodes(model)]
        if rx.search(n.name) or (n.output and rx.search(n.output[0]))
    ]
    if not hits:
        raise CalibkitError(
            f"--exclude-nodes {pattern!r} matches no node name or output; check `calibkit inspect` of the model's scales"
        )
    return hits


def export_qdq(
    model: onnx.ModelProto | str | Path,
    amax: dict[str, float],
    out_path: str | Path,
    placement: str = "trt",
    exclude_nodes: str | None = None,
    exclude_op_types: list[str] | None = None,
    tx=None,
    notes: list[str] | None = None,
    precision: str = "int8",
) -> Path:
    """Write the Q/DQ model atomically (with ``<name>.data`` beside it for external-data or
    large models); returns its path. ``model`` is a ModelProto or the path of an .onnx file
    (then its weights are never loaded here). ``notes`` collects what was normalised.
    ``precision``: ``int8`` (default) or ``fp8`` (E4M3FN, opset 19; calibkit/qdq/fp8.py)."""
    from calibkit.graph import forms as graph_forms
    from calibkit.qdq import bodies as qdq_subgraph
    from calibkit.qdq import files as qdq_io
    from calibkit.qdq import post as qdq_post

    if placement not in PLACEMENTS:
        raise CalibkitError(f"--placement {placement!r} must be one of {', '.join(PLACEMENTS)}")
    try:
        fmt = number_format(precision)
    except ValueError as exc:
        raise CalibkitError(f"--{exc}") from None
    if fmt is not INT8 and placement == "ort":
        raise CalibkitError(
            f"--precision {precision} with --placement ort: ONNX Runtime has no {precision} integer kernels to fuse into; use --placement trt"
        )
    source_dir = None
    if not isinstance(model, onnx.ModelProto):
        source_dir = Path(model).parent
        model = qdq_io.read_light(model)
    external = bool(qdq_io.external_locations(model)) or qdq_io.tensor_bytes(model) > qdq_io.LARGE_BYTES
    prepared, done = graph_forms.prepare(model)
    named = name_nodes(prepared)
    half = qdq_post.fp16_activations(named)
    if half:
        named, old = graph_forms.upgrade_opset(named, FP16_MIN_OPSET)
        if old is not None:
            done.append(f"opset {old} converted to {FP16_MIN_OPSET} for float16 Q/DQ")
    if fmt is not INT8:
        named, old = graph_forms.upgrade_opset(named, fmt.min_opset)
        if old is not None:
            done.append(f"opset {old} converted to {fmt.min_opset} for {fmt.name} Q/DQ")
    skip_types = set(exclude_op_types or [])
    known = set(COMPUTE_OPS) | set(ORT_EXTRA_OPS)
    unknown = sorted(skip_types - known)
    if unknown:
        raise CalibkitError(
            f"--exclude-op-types {unknown[0]!r} is not quantized anyway; quantized op types: {', '.join(sorted(known))}"
        )
    ops = quantized_ops(placement, skip_types)
    if not ops:
        raise CalibkitError("--exclude-op-types leaves no op type to quantize")
    present = {n.op_type for n in [*named.graph.node, *qdq_subgraph.body_nodes(named)]}
    if not present & set(ops):
        raise CalibkitError(f"the model has none of the quantizable op types ({', '.join(ops)}); nothing to export")
    extra = {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False}
    fused = placement == "trt-fused"
    if placement in TRT_PLACEMENTS:
        extra["OpTypesToExcludeOutputQuantization"] = list(ops) if fused else list(COMPUTE_OPS)
    if fused:  # pooling reads a tensor no quantized op writes (outputs stay float): quantize it anyway
        extra["ForceQuantizeNoInputCheck"] = True
    missing = [t for t in needed_activations(named, ops) if t not in amax] if not fused else []
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise CalibkitError(
            f"the scales have no entry for activation {missing[0]!r}{more}, an input of a quantized op; "
            + (
                "--placement ort also quantizes tensors that calibrate's --tensors trt and qdq leave out (Conv outputs): "
                "recalibrate with --tensors all (or these scales are from another graph)"
                if placement not in TRT_PLACEMENTS
                else "recalibrate this model (scales from another graph?)"
            )
        )
    target = Path(out_path)
    if target.is_dir():
        raise CalibkitError(f"output {target} is a directory; pass a file path for the Q/DQ model")
    skipped = excluded_nodes(named, exclude_nodes)
    skip_conv = set(skipped) | {n.name for n in named.graph.node if n.op_type in skip_types}
    quantized = None
    if fused:
        amax, skipped, skip_conv, quantized = _fused(named, amax, ops, skipped, skip_conv, done, precision)
    joins = (
        qdq_post.residual_inputs(
            named, amax, skip_conv, constants=qdq_rules.constant_tensors(named.graph) if fused else ()
        )
        if placement in TRT_PLACEMENTS
        else {}
    )
    with scratch("qdq") as tmp:
        cache = Path(tmp) / "ranges.json"
        cache.write_text(json.dumps(ort_tensors.tensors_data_dict(amax)))
        src = qdq_io.stage_input(named, source_dir, Path(tmp) / "in")
        # a name of its own: onnx's external-data writer refuses when "<name>.data" exists in the
        # *current directory* (an input model's own data file, for -o sub/<same name>.onnx)
        staged = Path(tmp) / "out" / "calibkit-staged.qdq.onnx"
        staged.parent.mkdir()
        _quantize(src, staged, ops, skipped, extra, cache, external)
        qdq = onnx.load(str(staged), load_external_data=False)
        if placement in TRT_PLACEMENTS:
            if quantized is None:
                quantized = {n.name for n in named.graph.node if n.op_type in ops and n.name not in skipped}
            qdq_post.float_consumers(qdq, quantized | set(joins))
        if joins and qdq_post.quantize_residuals(qdq, joins, amax):
            done.append(f"{len(joins)} residual Add inputs quantized (Conv+Add fusion)")
        if fused and joins and qdq_post.float_weighted_side(qdq, joins):
            done.append("residual Adds read their Conv side in float (Conv+Add fusion)")
        if half and qdq_post.float16_scales(qdq, half):
            done.append("float16 activation scales (float16 graph)")
        body_ops = [o for o in ops if o in COMPUTE_OPS] if fused else ops
        inner = qdq_subgraph.quantize_bodies(qdq, amax, body_ops, exclude_nodes, staged.parent)
        topo_sort(qdq.graph)  # ORT's quantizer sorts by explicit inputs: an If may land before what its branch reads
        done.extend(inner.notes())
        if placement == "ort" and inner.quantized:
            done.append("ops inside bodies get the trt placement (inputs of Conv/Gemm/MatMul only)")
        if fmt is not INT8:
            from calibkit.qdq import fp8 as qdq_fp8

            n = qdq_fp8.convert(qdq, amax, named, source_dir)
            qdq.ir_version = max(qdq.ir_version, qdq_fp8.MIN_IR_VERSION)
            done.append(f"{n} activation scales amax/{fmt.qmax:g}, weights per-channel, as FP8 E4M3FN")
        data = staged.with_name(staged.name + ".data")
        if fmt is not INT8 and data.exists():
            # the FP8 weights are new tensors in the graph; the staged data file holds the INT8
            # ones: read back what still points there and write one data file of what the graph uses
            from onnx.external_data_helper import load_external_data_for_model

            load_external_data_for_model(qdq, str(staged.parent))
            data.unlink()
            onnx.save_model(
                qdq, str(staged), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name
            )
        else:
            onnx.save_model(qdq, str(staged))
        qdq_io.check_written(staged, basic=fmt is not INT8)
        if notes is not None:
            notes.extend(done)
        return qdq_io.publish(staged, target, tx)


def _fused(named, amax, ops, skipped, skip_conv, done, precision="int8"):
    """The ``trt-fused`` rules (calibkit/qdq/rules.py): (amax with Concat inputs sharing their
    output's, nodes for ORT to exclude, nodes kept float, nodes quantized)."""
    decisions = qdq_rules.decide(named, skip_conv, precision)
    kept = [n for n, d in decisions.items() if d.op_type in ops and not d.quantized]
    shared = qdq_rules.shared_concat_amax(named, decisions, amax)
    missing = [t for t in qdq_rules.needed(named, decisions) if t not in amax and t not in shared]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise CalibkitError(
            f"the scales have no entry for activation {missing[0]!r}{more}, read by the trt-fused placement; recalibrate with `calibkit calibrate --tensors all` or use --placement trt"
        )
    if shared:
        done.append(f"{len(shared)} Concat inputs share their Concat's scale")
    by_rule: dict[str, int] = {}
    for d in decisions.values():
        if d.op_type in ops and not d.quantized and d.rule != "excluded":
            by_rule[d.rule] = by_rule.get(d.rule, 0) + 1
    if by_rule:
        done.append("kept in float by rule: " + ", ".join(f"{k} {v}" for k, v in sorted(by_rule.items())))
    quantized = {n for n, d in decisions.items() if d.quantized}
    return {**amax, **shared}, list(dict.fromkeys([*skipped, *kept])), set(skip_conv) | set(kept), quantized


def _quantize(src: Path, staged: Path, ops, skipped, extra, cache: Path, external: bool) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import CalibrationMethod

    try:
        with _quiet():
            quantize_static(
                str(src),
                str(staged),
                None,
                quant_format=QuantFormat.QDQ,
                activation_type=getattr(QuantType, INT8.ort_quant_type),
                weight_type=getattr(QuantType, INT8.ort_quant_type),
                per_channel=True,
                calibrate_method=CalibrationMethod.MinMax,
                op_types_to_quantize=ops,
                nodes_to_exclude=skipped,
                extra_options=extra,
                calibration_cache_path=str(cache),
                use_external_data_format=external,
            )
    except (KeyError, ValueError) as exc:
        raise CalibkitError(
            f"ONNX Runtime's quantizer refused the model: {str(exc).strip().splitlines()[0]}; recalibrate this model (scales from another graph?)"
        ) from None


def needed_activations(model: onnx.ModelProto, ops) -> list[str]:
    """Float activations (not weights or constants) feeding the op types that get Q/DQ."""
    from calibkit.graph.model import calibration_tensors

    calib = set(calibration_tensors(model))
    need: list[str] = []
    for node in model.graph.node:
        if node.op_type in ops:
            need += [i for i in activation_inputs(node) if i in calib and i not in need]
    return need


def activation_qdq(model: onnx.ModelProto) -> dict[str, tuple[str, float]]:
    """{float tensor: (its DequantizeLinear output, scale)} for quantized activations."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    dq_of = {n.input[0]: n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    found = {}
    for n in model.graph.node:
        if n.op_type == "QuantizeLinear" and n.input[0] not in inits:
            scale = numpy_helper.to_array(inits[n.input[1]])
            if scale.ndim == 0 and n.output[0] in dq_of:
                found[n.input[0]] = (dq_of[n.output[0]], float(scale))
    return found
