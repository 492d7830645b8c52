"""Verdicts, rankings, FP16-fallback advice and the ``results.json`` document."""

from __future__ import annotations

import json
import math
import platform
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from calibkit import __version__
from calibkit.atomic import write_text
from calibkit.validate.engine import CandidateResult, Evaluation

FORMAT = "calibkit-results"
VERSION = 1


@dataclass(frozen=True)
class Gates:
    min_cosine: float | None = None
    max_accuracy_drop: float | None = None  # percentage points
    min_sqnr: float | None = None  # dB, every output
    fallback_sqnr: float = 30.0  # local SQNR (dB) under which a layer is advised to stay FP16

    def given(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None and k != "fallback_sqnr"}


def accuracy(ev: Evaluation, r: CandidateResult) -> float | None:
    return 100.0 * r.correct / ev.samples if ev.task_metric and ev.samples else None


def verdict(ev: Evaluation, r: CandidateResult, gates: Gates) -> tuple[bool, list[str]]:
    fails = []
    ref_acc = accuracy(ev, ev.reference)
    for name, m in r.outputs.items():
        s = m.summary()
        if s["nonfinite"]:
            fails.append(f"{name}: {s['nonfinite']} NaN/Inf values")
        if gates.min_cosine is not None and s["cosine"] < gates.min_cosine:
            fails.append(f"{name}: cosine {s['cosine']:.5f} < {gates.min_cosine}")
        if gates.min_sqnr is not None and s["sqnr_db"] < gates.min_sqnr:
            fails.append(f"{name}: SQNR {s['sqnr_db']:.1f} dB < {gates.min_sqnr}")
    acc = accuracy(ev, r)
    if gates.max_accuracy_drop is not None:
        if acc is None:
            fails.append("--max-accuracy-drop needs --labels or --metric")
        elif ref_acc - acc > gates.max_accuracy_drop:
            fails.append(f"accuracy drop {ref_acc - acc:.2f} pp > {gates.max_accuracy_drop}")
    return not fails, fails


def rank(ev: Evaluation) -> list[CandidateResult]:
    """Best first: task accuracy, then the worst output SQNR."""

    def key(r: CandidateResult):
        acc = accuracy(ev, r)
        sq = min((m.summary()["sqnr_db"] for m in r.outputs.values()), default=-math.inf)
        return (-(acc if acc is not None else 0.0), -sq)

    return sorted(ev.candidates, key=key)


def consumers(model: onnx.ModelProto, tensor: str) -> list[str]:
    return [n.name or n.output[0] for n in model.graph.node if tensor in n.input]


def fallback_advice(model: onnx.ModelProto, r: CandidateResult, gates: Gates) -> dict:
    """Layers whose own quantization costs the most (local SQNR), and the nodes to keep in FP16."""
    rows = sorted(((t, loc.sqnr) for t, (_, loc) in r.layers.items()), key=lambda x: x[1])
    weak = [t for t, sq in rows if sq < gates.fallback_sqnr]
    nodes = sorted({n for t in weak for n in consumers(model, t) if n})
    regex = "^(" + "|".join(re.escape(n) for n in nodes) + ")$" if nodes else None
    return {"threshold_db": gates.fallback_sqnr, "tensors": weak, "nodes": nodes, "exclude_nodes": regex}


def environment(device: str) -> dict:
    import onnxruntime as ort

    from calibkit.providers import cuda_device_count, providers_for
    from calibkit.validate.backends import trt_reason

    env = {
        "calibkit": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numpy": np.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "ort_providers_built": ort.get_available_providers(),
        "ort_providers_used": providers_for(device),
        "cuda_devices": cuda_device_count(),
        "gpu": gpu_name(),
        "tensorrt": trt_reason(),
    }
    return env


def gpu_name() -> str | None:
    import ctypes

    from calibkit.providers import cuda_device_count

    if cuda_device_count() == 0:
        return None
    lib = ctypes.CDLL("libcuda.so.1")
    buf = ctypes.create_string_buffer(256)
    dev = ctypes.c_int(0)
    if lib.cuDeviceGet(ctypes.byref(dev), 0) != 0 or lib.cuDeviceGetName(buf, 256, dev) != 0:
        return None
    return buf.value.decode(errors="replace")


def _clean(x):
    if isinstance(x, float) and not math.isfinite(x):
        return "inf" if x > 0 else ("-inf" if x < 0 else "nan")
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_clean(v) for v in x]
    return x


def document(ev: Evaluation, model: onnx.ModelProto, model_info: dict, gates: Gates, device: str, provenance: dict) -> dict:
    ref_acc = accuracy(ev, ev.reference)
    cands = []
    for r in [ev.reference, *rank(ev)]:
        ok, why = verdict(ev, r, gates) if r is not ev.reference else (True, [])
        acc = accuracy(ev, r)
        cands.append({
            "label": r.label,
            "backend": r.backend,
            "method": r.method,
            "note": r.note,
            "pass": ok,
            "failures": why,
            "accuracy": acc,
            "accuracy_drop_pp": (ref_acc - acc) if acc is not None and r is not ev.reference else None,
            "latency": r.latency.summary(),
            "outputs": {n: m.summary() for n, m in r.outputs.items()},
            "layers": {t: {"sqnr_db": a.sqnr, "cosine": a.cosine, "local_sqnr_db": loc.sqnr, "local_cosine": loc.cosine, "scale": r.layer_scales.get(t)} for t, (a, loc) in r.layers.items()},
            "fp16_fallback": fallback_advice(model, r, gates) if r.layers else None,
            "qdq_model": str(r.model_path) if r.model_path else None,
        })
    tested = [c for c in cands[1:]]
    return _clean({
        "format": FORMAT,
        "version": VERSION,
        "model": model_info,
        "data": {"source": ev.data_description, "fingerprint": ev.data_fingerprint, "samples": ev.samples, "task_metric": ev.task_metric},
        "provenance": provenance,
        "gates": gates.given(),
        "pass": all(c["pass"] for c in tested),
        "best": tested[0]["label"] if tested else None,
        "candidates": cands,
        "environment": environment(device),
        "seconds": {"evaluation": ev.seconds},
    })


def write(doc: dict, path: str | Path, tx=None) -> Path:
    return write_text(path, json.dumps(doc, indent=1, allow_nan=False) + "\n", tx)
