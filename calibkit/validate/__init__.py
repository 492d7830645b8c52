"""``validate`` and ``compare``: the Python API behind the CLI commands of the same names."""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from calibkit.artifacts import histograms as store
from calibkit.artifacts import scales as scales_io
from calibkit.data import Preprocess, resolve_preprocess
from calibkit.data.options import FeedOptions
from calibkit.errors import CalibkitError, ThresholdFailed
from calibkit.graph.model import check_fingerprint, fingerprint_file, load
from calibkit.graph.subgraphs import tensor_names
from calibkit.numerics import clipping
from calibkit.outputs.publish import Transaction
from calibkit.outputs.scratch import scratch
from calibkit.qdq.files import copy_into
from calibkit.validate import backends as B
from calibkit.validate import results as R
from calibkit.validate.engine import evaluate

__all__ = ["Gates", "ValidationResult", "compare", "validate"]
Gates = R.Gates


@dataclass
class ValidationResult:
    doc: dict
    report: Path
    results: Path
    report_seconds: float


def _sibling_histograms(path: Path, model_fp: str) -> store.HistogramSet | None:
    h = path.parent / "histograms.npz"
    if not h.is_file():
        return None
    try:
        hs = store.load(h)
    except CalibkitError:
        return None
    return hs if hs.meta.get("model_fingerprint") == model_fp else None


def method_dir(spec: str) -> str:
    """A method spec as a directory name: ``percentile:99.9`` -> ``percentile-99.9``."""
    return "".join(c if c.isalnum() or c in "._" else "-" for c in spec)


def _recorded_limit(table) -> float:
    """The --warn-clip a scales.json was written with (the default for older files)."""
    limit = (table.meta.get("clip_warnings") or {}).get("limit")
    ok = isinstance(limit, (int, float)) and not isinstance(limit, bool) and 0.0 <= limit <= 1.0
    return float(limit) if ok else clipping.DEFAULT_WARN_CLIP


def _clip_doc(ws: list[clipping.ClipWarning], limit: float, in_compare: bool = False) -> dict:
    """A method's clip warnings as results.json records them (every tensor, worst first)."""
    return {
        "limit": limit,
        "count": len(ws),
        "tensors": [{**w.to_dict(), "message": w.message(in_compare)} for w in ws],
    }


def _advise(doc: dict, model: str | Path, scales_of: Callable[[dict], Path | None]) -> None:
    """Give each FP16-fallback suggestion the exact export-qdq command that applies it."""
    for c in doc["candidates"]:
        fb = c.get("fp16_fallback")
        scales = scales_of(c)
        if not fb or not fb.get("exclude_nodes") or scales is None:
            continue
        fp8 = c.get("backend") == "ort-fp8"
        label = c.get("label", "")
        placement = ["--placement", label[label.rindex("[") + 1 : -1]] if label.endswith("]") else []
        out = scales.parent / f"{Path(model).stem}.fp16-fallback{'.fp8' if fp8 else ''}.qdq.onnx"
        fb["command"] = shlex.join(
            [
                "calibkit",
                "export-qdq",
                str(model),
                "--scales",
                str(scales),
                *(["--precision", "fp8"] if fp8 else []),
                *placement,
                "--exclude-nodes",
                fb["exclude_nodes"],
                "-o",
                str(out),
            ]
        )


def _finish(doc, ev, hists, title, report, results, tx_dir=None, extra=None) -> ValidationResult:
    from calibkit.report import html

    report = Path(report)
    # a relative --results is the user's path from here, like every other path (a bare name
    # used to land in the report's folder while the message named the current one)
    results = Path(results).absolute() if results else report.with_suffix(".results.json")
    if results.absolute() == report.absolute():
        raise CalibkitError(f"--results {results} is the report itself; give the results JSON another name")
    t = time.perf_counter()
    text = html.render(doc, ev, hists, title)
    doc["seconds"]["report"] = time.perf_counter() - t
    with Transaction(
        tx_dir or report.parent,
        f"report-{report.name}" if tx_dir is None else "compare",
        command=doc.get("command") or ("validate" if tx_dir is None else "compare"),
    ) as tx:
        if extra is not None:
            extra(tx)
        R.write(doc, results, tx)
        tx.write_text(report, text)
        tx.commit()
    res = ValidationResult(doc, report, results, doc["seconds"]["report"])
    if not doc["pass"]:
        failed = [f"{c['label']} ({'; '.join(c['failures'])})" for c in doc["candidates"][1:] if not c["pass"]]
        err = ThresholdFailed(f"failed the gates: {', '.join(failed) or 'no candidate ran'}; see {report}")
        err.result = res
        raise err
    return res


def _variants(backend: str, precisions, placements) -> list[tuple[str, str | None]]:
    """(backend, placement or None for the backend's own) per compared precision x placement."""
    from calibkit.qdq.placement import TRT_PLACEMENTS

    if not precisions or not placements:
        raise CalibkitError("compare --precision / --placement: give at least one value")
    out = []
    for precision in precisions:
        if precision not in ("int8", "fp8"):
            raise CalibkitError(f"compare --precision {precision!r}: choose int8 or fp8")
        b = backend if precision == "int8" else "ort-fp8"
        for p in placements:
            if p not in TRT_PLACEMENTS:
                raise CalibkitError(f"compare --placement {p!r}: choose from {', '.join(TRT_PLACEMENTS)}")
            own = B.QDQ_BACKENDS[b][0]
            if b == "ort-int8-cpu":  # real INT8 kernels: ORT's own placement only
                out.append((b, None))
                break
            out.append((b, None if p == own else p))
    return list(dict.fromkeys(out))


def _placement_of(c) -> str | None:
    """The non-default placement a candidate's label names (None: its backend's own)."""
    label = c.label
    return label[label.rindex("[") + 1 : -1] if label.endswith("]") else None


def _reference_model(reference: str | Path, proto, model_path: Path):
    """``--reference``: an FP32 model with ``proto``'s input and output names, loaded."""
    ref_path = Path(reference)
    if ref_path.resolve() == model_path.resolve():
        raise CalibkitError(f"--reference {ref_path} is MODEL itself; leave --reference out")
    ref = load(ref_path)

    def names(p, part):
        inits = {i.name for i in p.graph.initializer}
        return [v.name for v in getattr(p.graph, part) if v.name not in inits]

    for part in ("input", "output"):
        if names(ref, part) != names(proto, part):
            raise CalibkitError(
                f"--reference {ref_path} has {part}s {names(ref, part)} but {model_path.name} has {names(proto, part)}; "
                "the reference must be the same network (the model quantize started from)"
            )
    if any(n.domain == "" and n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in ref.graph.node):
        raise CalibkitError(f"--reference {ref_path} is a Q/DQ model; give the FP32 model")
    return ref


def _candidates(specs, model, out_names, tmp, device, exclude_nodes, emulate_fp16):
    """``specs``: (backend, amax, method) or (backend, amax, method, Q/DQ placement)."""
    cands, unavailable = [], []
    for backend, amax, method, *placement in specs:
        try:
            cands.append(
                B.make(
                    backend,
                    model,
                    out_names,
                    tmp,
                    amax,
                    device=device,
                    method=method,
                    exclude_nodes=exclude_nodes,
                    emulate_fp16=emulate_fp16,
                    placement=placement[0] if placement else None,
                )
            )
        except B.Unavailable as why:
            unavailable.append({"backend": backend, "reason": str(why)})
    if not cands:
        raise CalibkitError(
            "no requested backend can run here: " + "; ".join(f"{u['backend']}: {u['reason']}" for u in unavailable)
        )
    return cands, unavailable


def validate(
    model: str | Path,
    scales: str | Path | None,
    data: Any,
    labels: str | None = None,
    metric: str | None = None,
    backends: list[str] = ("ort-int8", "ort-fp16"),
    report: str | Path = "report.html",
    results: str | Path | None = None,
    gates: R.Gates = R.Gates(),
    preprocess: Preprocess | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    exclude_nodes: str | None = None,
    emulate_fp16: bool = False,
    force: bool = False,
    allow_preprocess_mismatch: bool = False,
    progress: Callable[[int], None] | None = None,
    on_source: Callable[[Any], None] | None = None,
    feed: FeedOptions | None = None,
    reference: str | Path | None = None,
) -> ValidationResult:
    """``feed``: how the data is cut (FeedOptions), as for ``calibrate``. ``reference``: an FP32
    model (same inputs and outputs) whose outputs the candidates are judged against instead of
    ``model``'s, e.g. the original of a model whose weights ``quantize`` recovered."""
    from calibkit.outputs.sets import check_not_input

    # outputs that would replace an input are refused before the evaluation, not after it
    report_path = Path(report)
    for out in (report_path, Path(results) if results else report_path.with_suffix(".results.json")):
        check_not_input(out, "validate")
    model_path = Path(model)
    proto = load(model_path)
    model_fp = fingerprint_file(model_path)
    ref_proto = _reference_model(reference, proto, model_path) if reference is not None else None
    table = None
    if scales is not None:
        table = scales_io.read(scales)
        check_fingerprint(table.meta.get("model", {}).get("fingerprint"), model_fp, f"scales {scales}", force)
    for b in backends:
        if b not in B.BACKENDS:
            raise CalibkitError(f"--backends: unknown backend {b!r}; choose from {', '.join(B.BACKENDS)}")
    if table is not None:
        preprocess = resolve_preprocess(
            preprocess, table.meta.get("preprocess"), data, allow_preprocess_mismatch, f"scales {scales}"
        )
    out_names = [o.name for o in proto.graph.output]
    with scratch("validate") as tmp:
        specs = [
            (
                b,
                table.amax() if table else None,
                table.method if table and ("int8" in b or b in B.QDQ_BACKENDS) else None,
            )
            for b in backends
        ]
        cands, unavailable = _candidates(specs, proto, out_names, Path(tmp), device, exclude_nodes, emulate_fp16)
        ev = evaluate(
            proto, data, cands, preprocess, labels, metric, batch_size, device, progress, on_source, feed, ref_proto
        )
        prov = {
            "FP32 reference": f"{reference} ({fingerprint_file(reference)})" if reference is not None else None,
            "scales": str(scales) if scales else None,
            "method": f"{table.method} {table.params}" if table else None,
            "calibration data fingerprint": table.meta.get("data", {}).get("fingerprint") if table else None,
        }
        doc = R.document(ev, proto, {"name": model_path.name, "fingerprint": model_fp}, gates, device, prov)
        doc["unavailable"] = unavailable
        if table is not None:
            limit = _recorded_limit(table)
            doc["clip_warnings"] = {table.method: _clip_doc(clipping.warnings(table, limit), limit)}
        hists = _sibling_histograms(Path(scales), model_fp) if scales else None
        _advise(doc, model, lambda c: Path(scales) if scales and c.get("method") else None)
        return _finish(doc, ev, hists, f"calibkit validation: {model_path.name}", report, results)


def compare(
    model: str | Path,
    histograms: str | Path,
    data: Any,
    method_specs: list[str],
    labels: str | None = None,
    metric: str | None = None,
    backend: str = "ort-int8",
    report: str | Path = "compare.html",
    results: str | Path | None = None,
    gates: R.Gates = R.Gates(),
    preprocess: Preprocess | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    exclude_nodes: str | None = None,
    force: bool = False,
    allow_preprocess_mismatch: bool = False,
    output_dir: str | Path | None = None,
    export_qdq: bool = False,
    trt_version: str | None = None,
    progress: Callable[[int], None] | None = None,
    on_source: Callable[[Any], None] | None = None,
    warn_clip: float = clipping.DEFAULT_WARN_CLIP,
    feed: FeedOptions | None = None,
    precisions: tuple[str, ...] = ("int8",),
    placements: tuple[str, ...] = ("trt",),
) -> ValidationResult:
    """Score ``method_specs`` on one validation pass; each method's scales.json, TensorRT cache
    and TensorsData (and with ``export_qdq`` its Q/DQ model) go to ``output_dir/<method>/``
    (default: ``<report>.methods/`` beside the report), published with the report as one set.
    ``precisions`` x ``placements``: each method also runs as FP8 (ort-fp8) and/or with other
    Q/DQ placements, side by side (the first of each is the method's main candidate)."""
    from calibkit import methods
    from calibkit.artifacts import trt_cache
    from calibkit.calibration import stage_scales, write_scales

    if backend not in ("ort-int8", "ort-int8-cpu"):
        raise CalibkitError(f"compare --backend {backend!r}: methods are compared on ort-int8 or ort-int8-cpu")
    variants = _variants(backend, precisions, placements)
    model_path = Path(model)
    proto = load(model_path)
    model_fp = fingerprint_file(model_path)
    hs = store.load(histograms)
    check_fingerprint(hs.meta.get("model_fingerprint"), model_fp, f"histograms {histograms}", force)
    store.check_names(hs, tensor_names(proto), f"histograms {histograms}")
    preprocess = resolve_preprocess(
        preprocess, hs.meta.get("preprocess"), data, allow_preprocess_mismatch, f"histograms {histograms}"
    )
    if not method_specs:
        raise CalibkitError("--methods is empty; e.g. --methods entropy,percentile:99.99,minmax,mse")
    if len({method_dir(m) for m in method_specs}) != len(method_specs):
        raise CalibkitError("--methods lists the same method twice")
    out_dir = Path(output_dir) if output_dir else Path(report).parent / f"{Path(report).stem}.methods"
    version = trt_cache.encode_version(
        trt_version or trt_cache.installed_trt_version() or trt_cache.DEFAULT_TRT_VERSION
    )
    warn_clip = clipping.check_limit(warn_clip)
    specs, staged, clip = [], {}, {}
    for spec in method_specs:
        name, cfg = methods.parse_spec(spec)
        table = scales_io.compute(hs, name, cfg)
        staged[spec] = stage_scales(table, hs, model_path, model_fp, version, "EntropyCalibration2", warn_clip)
        specs += [(b, table.amax(), spec, p) for b, p in variants]
        clip[spec] = _clip_doc(clipping.warnings(table, warn_clip), warn_clip, in_compare=True)
    out_names = [o.name for o in proto.graph.output]
    with scratch("compare") as tmp:
        cands, _ = _candidates(specs, proto, out_names, Path(tmp), device, exclude_nodes, False)
        ev = evaluate(proto, data, cands, preprocess, labels, metric, batch_size, device, progress, on_source, feed)
        prov = {
            "histograms": str(histograms),
            "calibration data fingerprint": hs.meta.get("data_fingerprint"),
            "calibration samples": hs.samples,
        }
        doc = R.document(ev, proto, {"name": model_path.name, "fingerprint": model_fp}, gates, device, prov)
        doc["unavailable"] = []
        # compare passes when the best method passes: it answers "which method", not "all of them"
        doc["pass"] = bool(doc["candidates"][1:]) and doc["candidates"][1]["pass"]
        doc["method_outputs"] = {spec: str(out_dir / method_dir(spec)) for spec in method_specs}
        doc["clip_warnings"] = clip
        _advise(
            doc,
            model,
            lambda c: out_dir / method_dir(c["method"]) / "scales.json" if c.get("method") in staged else None,
        )
        main = variants[0]
        qdq_of = {c.method: c.model_path for c in cands if (c.backend, _placement_of(c)) == main}
        more_qdq = [
            (c.method, c.model_path, _placement_of(c), c.backend)
            for c in cands
            if c.model_path and (c.backend, _placement_of(c)) != main
        ]

        def extra(tx) -> None:
            for spec, files in staged.items():
                d = out_dir / method_dir(spec)
                write_scales(tx, files, d)
                if export_qdq and qdq_of.get(spec):
                    tx.write_with(
                        d / f"{model_path.stem}.qdq.onnx", lambda fh, src=qdq_of[spec]: copy_into(src, fh)
                    )  # streamed, not read whole
            for spec, src, placement, b in more_qdq if export_qdq else []:
                tag = f"{placement or B.QDQ_BACKENDS[b][0]}.{B.QDQ_BACKENDS[b][1]}"
                tx.write_with(
                    out_dir / method_dir(spec) / f"{model_path.stem}.{tag}.qdq.onnx",
                    lambda fh, src=src: copy_into(src, fh),
                )

        return _finish(
            doc, ev, hs, f"calibkit method comparison: {model_path.name}", report, results, tx_dir=out_dir, extra=extra
        )
