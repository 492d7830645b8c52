"""``sensitivity`` and ``fallback``: which layers hurt INT8, and the fewest to keep in float.

Both work on one switchable session of the model (switch.py), evaluate configurations in
parallel through calibkit's executor (local processes or Ray), journal every evaluation so an
interrupted run resumes, and publish their outputs as one set (publish.Transaction).
``fallback`` ends with a full validation of the exported Q/DQ model with the chosen layers
excluded, next to the all-INT8 model: the verdict comes from that validation, not the search.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from calibkit.artifacts import scales as scales_io
from calibkit.data import Preprocess, resolve_preprocess
from calibkit.data.options import FeedOptions
from calibkit.errors import CalibkitError, ThresholdFailed
from calibkit.graph.model import check_fingerprint, fingerprint_file, load
from calibkit.outputs.publish import Transaction
from calibkit.outputs.scratch import scratch
from calibkit.sensitivity import report as SR
from calibkit.sensitivity import search as _search
from calibkit.sensitivity.run import Session, open_session
from calibkit.sensitivity.search import Sensitivity, Target, rank_layers
from calibkit.sensitivity.verify import verify

__all__ = ["Target", "fallback", "sensitivity", "SensitivityResult", "FallbackResult"]


@dataclass
class SensitivityResult:
    doc: dict
    json: Path
    report: Path


@dataclass
class FallbackResult:
    doc: dict
    json: Path
    report: Path
    qdq: Path
    exclude_list: Path
    keep_fp16: Path


def _open(
    model,
    scales,
    data,
    labels,
    metric,
    preprocess,
    feed,
    batch_size,
    workers,
    ray,
    force,
    allow_preprocess_mismatch,
    reference=None,
):
    model_path = Path(model)
    proto = load(model_path)
    model_fp = fingerprint_file(model_path)
    table = scales_io.read(scales)
    check_fingerprint(table.meta.get("model", {}).get("fingerprint"), model_fp, f"scales {scales}", force)
    preprocess = resolve_preprocess(
        preprocess, table.meta.get("preprocess"), data, allow_preprocess_mismatch, f"scales {scales}"
    )
    ref = None
    if reference is not None:
        ref = (load(Path(reference)), fingerprint_file(Path(reference)))
    s = open_session(
        model_path, proto, model_fp, table.amax(), data, preprocess, labels, metric, feed, batch_size, workers, ray, ref
    )
    return model_path, model_fp, table, preprocess, s


def _rank(s: Session, gates: dict, progress) -> tuple[Sensitivity, Any, Callable[[], None]]:
    ev, close = s.evaluator(progress)
    try:
        sens = rank_layers(ev, len(s.sw.units), s.ref_task, task_first=list(gates) == ["max_accuracy_drop"])
    except BaseException:
        close()
        raise
    return sens, ev, close


def sensitivity(
    model: str | Path,
    scales: str | Path,
    data: Any,
    output_dir: str | Path,
    labels: str | None = None,
    metric: str | None = None,
    target: Target = Target(),
    preprocess: Preprocess | None = None,
    feed: FeedOptions | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    ray: str | None = None,
    force: bool = False,
    allow_preprocess_mismatch: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> SensitivityResult:
    """Rank every quantized layer unit by how much INT8 in it costs; writes ``sensitivity.json``
    and ``sensitivity.html`` to ``output_dir``."""
    t0 = time.perf_counter()
    out = Path(output_dir)
    with Transaction(out, "sensitivity", command="sensitivity") as tx:  # locks the folder for the whole run
        model_path, model_fp, table, _, s = _open(
            model,
            scales,
            data,
            labels,
            metric,
            preprocess,
            feed,
            batch_size,
            workers,
            ray,
            force,
            allow_preprocess_mismatch,
        )
        gates, default = target.applied(s.vs.task is not None)
        sens, ev, close = _rank(s, gates, progress)
        close()
        doc = SR.sensitivity_doc(
            s, sens, ev, table, {"name": model_path.name, "fingerprint": model_fp}, gates, default, str(scales)
        )
        doc["seconds"] = round(time.perf_counter() - t0, 3)
        html = SR.page(f"calibkit sensitivity: {model_path.name}", SR.section(doc, s, _hists(scales, model_fp)))
        j = SR.write_json(doc, out / "sensitivity.json", tx)
        r = tx.write_text(out / "sensitivity.html", html)
        tx.commit()
    return SensitivityResult(doc, j, r)


def _hists(scales, model_fp):
    from calibkit.validate import _sibling_histograms

    return _sibling_histograms(Path(scales), model_fp)


def fallback(
    model: str | Path,
    scales: str | Path,
    data: Any,
    output_dir: str | Path,
    labels: str | None = None,
    metric: str | None = None,
    target: Target = Target(),
    preprocess: Preprocess | None = None,
    feed: FeedOptions | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    ray: str | None = None,
    force: bool = False,
    allow_preprocess_mismatch: bool = False,
    progress: Callable[[int, int], None] | None = None,
    device: str = "cpu",
    reference: str | Path | None = None,
) -> FallbackResult:
    """The fewest layers to keep in float so ``target`` holds, verified by a full validation.
    ``reference``: the FP32 model every configuration is compared with, when it is not ``model``
    (``quantize`` passes the original model; ``model`` carries recovered weights)."""
    t0 = time.perf_counter()
    out = Path(output_dir)
    with Transaction(out, "fallback", command="fallback") as tx:  # locks the folder for the whole run
        return _fallback(
            tx,
            out,
            t0,
            model,
            scales,
            data,
            labels,
            metric,
            target,
            preprocess,
            feed,
            batch_size,
            workers,
            ray,
            force,
            allow_preprocess_mismatch,
            progress,
            device,
            reference,
        )


def _fallback(
    tx,
    out,
    t0,
    model,
    scales,
    data,
    labels,
    metric,
    target,
    preprocess,
    feed,
    batch_size,
    workers,
    ray,
    force,
    allow_preprocess_mismatch,
    progress,
    device,
    reference=None,
) -> FallbackResult:
    from calibkit.validate import results as R
    from calibkit.validate.engine import evaluate

    model_path, model_fp, table, preprocess, s = _open(
        model,
        scales,
        data,
        labels,
        metric,
        preprocess,
        feed,
        batch_size,
        workers,
        ray,
        force,
        allow_preprocess_mismatch,
        reference,
    )
    gates, default = target.applied(s.vs.task is not None)
    sens, ev, close = _rank(s, gates, progress)
    try:
        fb = _search.search(ev, sens, gates)
    finally:
        close()
    qdq_name = f"{model_path.stem}.fallback.qdq.onnx"
    model_info = {"name": model_path.name, "fingerprint": model_fp}
    with scratch("fallback") as tmp:

        def run(cands):
            return evaluate(s.reference, data, cands, preprocess, labels, metric, batch_size, device, feed=feed)

        ver = verify(
            s, table, fb.kept, sens.order(), fb.met, gates, run, model_info, str(scales), Path(tmp), device, fb.steps
        )
        fb.kept, nodes, v, vdoc, after = ver.kept, ver.nodes, ver.evaluation, ver.doc, ver.after
        doc = SR.fallback_doc(s, sens, ev, fb, table, model_info, gates, default, str(scales), nodes, vdoc)
        doc["seconds"] = round(time.perf_counter() - t0, 3)
        paths = {
            "json": out / "fallback.json",
            "report": out / "report.html",
            "qdq": out / qdq_name,
            "exclude": out / "exclude-nodes.txt",
            "keep": out / "keep-fp16.txt",
        }
        doc["commands"] = _commands(model_path, scales, paths, nodes)
        html = SR.fallback_page(doc, v, vdoc, s, _hists(scales, model_fp), f"calibkit fallback: {model_path.name}")
        from calibkit.qdq.files import copy_into

        tx.write_with(paths["qdq"], lambda fh: copy_into(after.model_path, fh))
        text = "".join(f"{n}\n" for n in nodes)
        tx.write_text(paths["exclude"], text)
        tx.write_text(paths["keep"], text)
        R.write(vdoc, out / "report.results.json", tx)
        SR.write_json(doc, paths["json"], tx)
        tx.write_text(paths["report"], html)
        tx.commit()
    res = FallbackResult(doc, paths["json"], paths["report"], paths["qdq"], paths["exclude"], paths["keep"])
    if not doc["pass"]:
        err = ThresholdFailed(doc["verdict"] + f"; see {paths['report']}")
        err.result = res
        raise err
    return res


def _commands(model_path: Path, scales, paths: dict, nodes: list[str]) -> dict:
    if not nodes:
        return {}
    return {
        "export_qdq": shlex.join(
            [
                "calibkit",
                "export-qdq",
                str(model_path),
                "--scales",
                str(scales),
                "--exclude-list",
                str(paths["exclude"]),
                "-o",
                str(paths["qdq"]),
            ]
        ),
        "build_trt10": shlex.join(
            [
                "calibkit",
                "build",
                str(model_path),
                "--engine",
                str(paths["json"].parent / f"{model_path.stem}.fallback.int8.plan"),
                "--int8",
                "--cache",
                str(Path(scales).parent / f"{model_path.stem}.cache"),
                "--from-report",
                str(paths["keep"]),
            ]
        ),
        "build_trt11": shlex.join(
            [
                "calibkit",
                "build",
                str(model_path),
                "--engine",
                str(paths["json"].parent / f"{model_path.stem}.fallback.qdq.plan"),
                "--qdq",
                str(paths["qdq"]),
            ]
        ),
    }


def check_target(target: Target) -> None:
    import math

    for name, v, lo, hi in (
        ("--min-cosine", target.min_cosine, -1.0, 1.0),
        ("--max-accuracy-drop", target.max_accuracy_drop, 0.0, 100.0),
    ):
        if v is not None and not (math.isfinite(v) and lo <= v <= hi):
            raise CalibkitError(f"{name} {v} must be a finite number in [{lo:g}, {hi:g}]")
