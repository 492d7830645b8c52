"""The layer report of a built engine: which precision each ONNX node actually got.

Input is TensorRT's engine information JSON, the same document from ``IEngineInspector.
get_engine_information(LayerInformationFormat.JSON)`` of an engine built with
``ProfilingVerbosity.DETAILED`` and from ``trtexec --profilingVerbosity=detailed
--exportLayerInfo=FILE``: ``{"Layers": [{"Name", "LayerType", "Inputs": [{"Name", "Dimensions",
"Format/Datatype"}], "Outputs": [...], "Metadata": "[ONNX Layer: <node>]...", ...}], "Bindings": [...]}``.
A layer's precision is the lowest float type among its inputs' ``Format/Datatype`` (its
outputs' when no input says), INT8 < FP8 < FP16/BF16 < FP32; integer and bool tensors say nothing.
Needs no TensorRT.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from calibkit.errors import CalibkitError
from calibkit.trt.layers import onnx_nodes

FORMAT = "calibkit-layer-report"
VERSION = 1
QUANTIZED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")  # what calibkit's placement quantizes; INT8 expected
ORDER = ("INT8", "FP8", "FP16", "BF16", "FP32")
_KINDS = (
    ("INT8", re.compile(r"\bint8\b", re.I)),
    ("FP8", re.compile(r"\bfp8\b|float8", re.I)),
    ("BF16", re.compile(r"\bbf16\b|bfloat16", re.I)),
    ("FP16", re.compile(r"\bhalf\b|\bfp16\b|float16", re.I)),
    ("FP32", re.compile(r"\bfloat\b|\bfp32\b|float32", re.I)),
)


def tensor_precision(fmt: str) -> str | None:
    """``"Row major linear FP32"`` -> FP32; ``"Thirty-two wide channel vectorized row major Int8 format."``
    -> INT8; integer/bool/unknown (``"N/A due to dynamic shapes"``) -> None."""
    for kind, pattern in _KINDS:
        if pattern.search(fmt or ""):
            return kind
    return None


def layer_precision(layer: dict) -> str | None:
    for side in ("Inputs", "Outputs"):
        kinds = [
            tensor_precision(str(t.get("Format/Datatype", ""))) for t in layer.get(side) or [] if isinstance(t, dict)
        ]
        kinds = [k for k in kinds if k]
        if kinds:
            return min(kinds, key=ORDER.index)
    return None


def read_layers(doc, where: str = "layer information") -> list[dict]:
    if isinstance(doc, str):
        try:
            doc = json.loads(doc)
        except ValueError as exc:
            raise CalibkitError(f"{where} is not JSON ({exc}); pass trtexec's --exportLayerInfo file") from None
    layers = doc.get("Layers") if isinstance(doc, dict) else None
    if not isinstance(layers, list):
        raise CalibkitError(
            f"{where} has no \"Layers\" list; pass trtexec's --exportLayerInfo file or calibkit's <engine>.layers.json"
        )
    if layers and not all(isinstance(x, dict) for x in layers):
        raise CalibkitError(
            f"{where} lists layer names only: build with --profilingVerbosity=detailed (calibkit's build does) to see precisions"
        )
    return layers


def report(doc, model=None, kept: list[str] | tuple = (), int8: bool = True, where: str = "layer information") -> dict:
    """Per ONNX node the precisions its layers ran in; nodes expected in INT8 that did not
    (``fallbacks``); kept nodes and whether they ran FP16; names that matched nothing."""
    layers = read_layers(doc, where)
    ops = {n.name: n.op_type for n in model.graph.node} if model is not None else {}
    nodes: dict[str, dict] = {}
    internal = []
    counts: dict[str, int] = {}
    metas = [onnx_nodes(m if isinstance(m := layer.get("Metadata"), str) else None) for layer in layers]
    by_name = not any(metas)  # no [ONNX Layer: ...] anywhere (an older TensorRT): layer names are node names
    for layer, found in zip(layers, metas):
        name = str(layer.get("Name", "?"))
        prec = layer_precision(layer) or "other"
        counts[prec] = counts.get(prec, 0) + 1
        if not found and (by_name or name in ops):
            found = [name]
        known = [n for n in found if not ops or n in ops]
        if not known:
            internal.append(name)
            continue
        for node in known:
            entry = nodes.setdefault(node, {"op": ops.get(node), "precisions": [], "layers": []})
            if prec not in entry["precisions"]:
                entry["precisions"].append(prec)
            entry["layers"].append(name)
    kept = list(kept)
    fallbacks = []
    if int8:
        for node, e in nodes.items():
            if e["op"] in QUANTIZED_OPS and node not in kept and "INT8" not in e["precisions"]:
                fallbacks.append({"node": node, "op": e["op"], "expected": "INT8", "got": e["precisions"]})
    missing = sorted(n for n, op in ops.items() if op in QUANTIZED_OPS and n not in nodes)
    return {
        "format": FORMAT,
        "version": VERSION,
        "counts": dict(sorted(counts.items())),
        "nodes": nodes,
        "fallbacks": fallbacks,
        "kept": {
            "fp16": [n for n in kept if n in nodes and "FP16" in nodes[n]["precisions"]],
            "not_fp16": [n for n in kept if n in nodes and "FP16" not in nodes[n]["precisions"]],
            "matched_nothing": [n for n in kept if n not in nodes],
        },
        "layers_without_node": internal,
        "nodes_without_layer": missing,
    }


def summary(rep: dict) -> str:
    counts = ", ".join(f"{v} {k}" for k, v in rep["counts"].items())
    parts = [f"{len(rep['nodes'])} ONNX nodes in {sum(rep['counts'].values())} layers ({counts})"]
    if rep["fallbacks"]:
        fb = rep["fallbacks"]
        parts.append(
            f"{len(fb)} not in INT8: "
            + ", ".join(f"{f['node']} ({'/'.join(f['got']) or '?'})" for f in fb[:5])
            + (", ..." if len(fb) > 5 else "")
        )
    k = rep["kept"]
    if k["not_fp16"]:
        parts.append("kept but not FP16: " + ", ".join(k["not_fp16"]))
    if k["matched_nothing"]:
        parts.append("kept names that matched no layer: " + ", ".join(k["matched_nothing"]))
    return "; ".join(parts)


def write(rep: dict, path: Path) -> Path:
    from calibkit.outputs.atomic import write_text

    return write_text(path, json.dumps(rep, indent=1, sort_keys=True) + "\n")


def load(path: Path, model=None) -> dict:
    """A calibkit layer report, or trtexec's --exportLayerInfo JSON (made into one)."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise CalibkitError(f"cannot read layer report {path}: {exc}") from None
    if isinstance(doc, dict) and doc.get("format") == FORMAT:
        return doc
    return report(doc, model, where=str(path))
