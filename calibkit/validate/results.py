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
from calibkit.outputs.atomic import write_text
from calibkit.validate.engine import CandidateResult, Evaluation

FORMAT = "calibkit-results"
VERSION = 1


# Applied when no gate is given (documented in the README): an INT8 candidate whose outputs
# point elsewhere than FP32's, or that loses a point of task accuracy, is not a pass.
DEFAULT_MIN_COSINE = 0.99
DEFAULT_MAX_ACCURACY_DROP = 1.0
CHECK_DATA_SQNR = 10.0  # dB: a candidate this far off usually means the data, not the quantizer


@dataclass(frozen=True)
class Gates:
    min_cosine: float | None = None
    max_accuracy_drop: float | None = None  # percentage points
    min_sqnr: float | None = None  # dB, every output
    fallback_sqnr: float = 30.0  # local SQNR (dB) under which a layer is advised to stay FP16

    def given(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None and k != "fallback_sqnr"}

    def applied(self, has_task: bool) -> tuple[dict, bool]:
        """(the gates that decide the verdict, whether they are the defaults)."""
        given = self.given()
        if given:
            return given, False
        default = {"min_cosine": DEFAULT_MIN_COSINE}
        if has_task:
            default["max_accuracy_drop"] = DEFAULT_MAX_ACCURACY_DROP
        return default, True


def accuracy(ev: Evaluation, r: CandidateResult) -> float | None:
    return 100.0 * r.correct / ev.samples if ev.task_metric and ev.samples else None


def _below(value, limit) -> bool:
    """Fail closed: NaN, None or a string (\"nan\") is below any limit."""
    return not (isinstance(value, (int, float)) and value >= limit)


def verdict(ev: Evaluation, r: CandidateResult, gates: dict) -> tuple[bool, list[str]]:
    fails = []
    ref_acc = accuracy(ev, ev.reference)
    if not r.outputs or ev.samples == 0:
        fails.append("no output was compared (no validation samples?)")
    for name, m in r.outputs.items():
        s = m.summary()
        if s.get("reference_nonfinite"):
            fails.append(
                f"{name}: the FP32 reference has {s['reference_nonfinite']} NaN/Inf values, so nothing can be "
                "compared with it (NaN/Inf in the validation data?)"
            )
        if s["nonfinite"]:
            fails.append(f"{name}: {s['nonfinite']} NaN/Inf values")
        if "min_cosine" in gates and _below(s["cosine"], gates["min_cosine"]):
            fails.append(f"{name}: cosine {s['cosine']:.5f} < {gates['min_cosine']} (min_cosine)")
        if "min_sqnr" in gates and _below(s["sqnr_db"], gates["min_sqnr"]):
            fails.append(f"{name}: SQNR {s['sqnr_db']:.2f} dB < {gates['min_sqnr']} dB (min_sqnr)")
    acc = accuracy(ev, r)
    if "max_accuracy_drop" in gates:
        limit = gates["max_accuracy_drop"]
        if acc is None or ref_acc is None:
            fails.append("max_accuracy_drop needs a task metric: pass --labels or --metric")
        elif not (math.isfinite(acc) and math.isfinite(ref_acc)):
            fails.append(f"accuracy is {acc} vs FP32 {ref_acc}: not a number (the metric returned NaN?)")
        elif at_chance(ev):
            fails.append("accuracy cannot be judged: " + at_chance(ev))
        elif _below(-(ref_acc - acc), -limit):
            fails.append(f"accuracy drop {ref_acc - acc:.2f} pp > {limit} pp (max_accuracy_drop)")
    return not fails, fails


def at_chance(ev: Evaluation) -> str | None:
    """Why FP32's top-1 accuracy is indistinguishable from guessing (within 3 binomial standard
    errors of 1/classes), or None: then no accuracy verdict can be trusted."""
    ref_acc = accuracy(ev, ev.reference)
    if ev.task_metric != "top-1 accuracy vs labels" or ref_acc is None or not ev.classes or not ev.samples:
        return None
    p = 1.0 / ev.classes
    limit = 100.0 * (p + 3.0 * math.sqrt(p * (1 - p) / ev.samples))
    if ref_acc <= limit:
        return (
            f"FP32 top-1 accuracy {ref_acc:.2f}% is at chance level ({100 * p:.2f}% for {ev.classes} classes, <= {limit:.2f}% on {ev.samples} samples): "
            "check that --labels lists the samples in the data's order and that the data is preprocessed as for training"
        )
    return None


def data_warnings(ev: Evaluation, cands: list[dict]) -> list[str]:
    """Signs that the validation data, not quantization, is wrong: shown as 'check your data'."""
    warn = []
    chance = at_chance(ev)
    if chance:
        warn.append(chance)
    for c in cands:
        for name, o in c["outputs"].items():
            sq = o["sqnr_db"]
            if _below(sq, CHECK_DATA_SQNR) and sq != "inf":
                warn.append(
                    f"{c['label']}: output {name} SQNR {fmt_db(sq)} dB is under {CHECK_DATA_SQNR:g} dB: check your data (preprocessed like the calibration data?) before blaming INT8"
                )
    return warn


def fmt_db(v) -> str:
    return f"{v:.2f}" if isinstance(v, (int, float)) else str(v)


def _worst_sqnr(r: CandidateResult) -> float:
    vals = [m.summary()["sqnr_db"] for m in r.outputs.values()]
    return min((v if math.isfinite(v) or v > 0 else -math.inf for v in vals), default=-math.inf)


def rank(ev: Evaluation) -> list[CandidateResult]:
    """Best first: task accuracy, then the worst output SQNR (NaN ranks last)."""

    def key(r: CandidateResult):
        acc = accuracy(ev, r)
        acc = acc if acc is not None and math.isfinite(acc) else -math.inf
        return (-acc, -_worst_sqnr(r))

    return sorted(ev.candidates, key=key)


SQNR_TIE_DB = 0.1


def tied(ev: Evaluation, a: CandidateResult, b: CandidateResult) -> bool:
    """Whether ``a`` and ``b`` cannot be told apart on this data.

    With a task metric: their accuracies differ by less than one sample, or by less than twice
    the standard error of the paired per-sample difference (the run's own noise). Without
    one: their worst output SQNRs are within 0.1 dB.
    """
    if (
        ev.task_metric
        and a.scores is not None
        and b.scores is not None
        and len(a.scores) == len(b.scores)
        and len(a.scores)
    ):
        d = a.scores - b.scores
        if not np.isfinite(d).all():
            return False
        n = len(d)
        diff = abs(float(d.sum()))
        return diff < 1.0 or diff / n < 2.0 * float(d.std(ddof=1) if n > 1 else 0.0) / math.sqrt(n)
    sa, sb = _worst_sqnr(a), _worst_sqnr(b)
    return math.isfinite(sa) and math.isfinite(sb) and abs(sa - sb) < SQNR_TIE_DB


def ranks(ev: Evaluation, order: list[CandidateResult]) -> list[str]:
    """'1', '2=', '2=', '4' ...: a candidate tied with its predecessor shares its rank."""
    out, start = [], 0
    for i, r in enumerate(order):
        if i and not tied(ev, order[i - 1], r):
            start = i
        out.append(str(start + 1))
    shared = {r for r in out if out.count(r) > 1}
    return [r + "=" if r in shared else r for r in out]


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

    from calibkit.sessions import cuda_device_count, providers_for
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

    from calibkit.sessions import cuda_device_count

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


def document(
    ev: Evaluation, model: onnx.ModelProto, model_info: dict, gates: Gates, device: str, provenance: dict
) -> dict:
    ref_acc = accuracy(ev, ev.reference)
    applied, default = gates.applied(ev.task_metric is not None)
    order = rank(ev)
    rank_of = dict(zip([id(r) for r in order], ranks(ev, order)))
    cands = []
    for r in [ev.reference, *order]:
        ok, why = verdict(ev, r, applied) if r is not ev.reference else (True, [])
        acc = accuracy(ev, r)
        cands.append(
            {
                "label": r.label,
                "rank": rank_of.get(id(r)),
                "backend": r.backend,
                "method": r.method,
                "note": r.note,
                "pass": ok,
                "failures": why,
                "accuracy": acc,
                "accuracy_drop_pp": (ref_acc - acc) if acc is not None and r is not ev.reference else None,
                "latency": r.latency.summary(),
                "outputs": {n: m.summary() for n, m in r.outputs.items()},
                "layers": {
                    t: {
                        "sqnr_db": a.sqnr,
                        "cosine": a.cosine,
                        "local_sqnr_db": loc.sqnr,
                        "local_cosine": loc.cosine,
                        "scale": r.layer_scales.get(t),
                    }
                    for t, (a, loc) in r.layers.items()
                },
                "fp16_fallback": fallback_advice(model, r, gates) if r.layers else None,
                # the name only: the model was built in the run's temporary folder, gone after it
                # (a path there pointed at a deleted file); `calibkit export-qdq` writes it for keeps
                "qdq_model": r.model_path.name if r.model_path else None,
            }
        )
    tested = [c for c in cands[1:]]
    warnings = data_warnings(ev, tested)
    return _clean(
        {
            "format": FORMAT,
            "version": VERSION,
            "model": model_info,
            "data": {
                "source": ev.data_description,
                "fingerprint": ev.data_fingerprint,
                "samples": ev.samples,
                "task_metric": ev.task_metric,
                "feed": ev.feed,
            },
            "provenance": provenance,
            "gates": applied,
            "gates_default": default,
            "warnings": warnings,
            "pass": bool(tested) and all(c["pass"] for c in tested),
            "best": tested[0]["label"] if tested else None,
            "candidates": cands,
            "environment": environment(device),
            "seconds": {"evaluation": ev.seconds},
        }
    )


def write(doc: dict, path: str | Path, tx=None) -> Path:
    return write_text(path, json.dumps(doc, indent=1, allow_nan=False) + "\n", tx)
