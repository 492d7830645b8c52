"""What ``quantize`` publishes, as one set: models, scales, cache, report."""

from __future__ import annotations

import json
from pathlib import Path

import onnx

from calibkit.artifacts import histograms as store
from calibkit.artifacts import scales as scales_io
from calibkit.artifacts import trt_cache
from calibkit.artifacts.histograms import HistogramSet
from calibkit.graph.model import fingerprint_file
from calibkit.methods.auto import expected_mse
from calibkit.numerics.clipping import saturated_fraction
from calibkit.numerics.formats import int8_scale, usable_amax
from calibkit.outputs.scratch import scratch


def scales_for(hset: HistogramSet, amax: dict[str, float], why: dict[str, dict], model_path: Path, base="entropy"):
    """(the scale table of ``amax`` for the model at ``model_path``, its rendered files).

    Every tensor's amax is exactly the one the kept stages were scored with (``amax``); the rows
    keep ``auto``'s statistics and candidates, with ``method`` and ``criterion`` saying where the
    amax came from: the consumer's error, auto, or calibrate's ``base`` method (when the
    threshold step was not kept or not asked for). The table's meta names the model."""
    from calibkit.calibration import stage_scales

    table = scales_io.compute(hset, "auto", threads=1)
    for name, row in table.tensors.items():
        if name not in amax:
            continue
        w = why.get(name, {})
        a = usable_amax(float(amax[name]))  # the exporter's reading of a degenerate amax
        by = w.get("by") or f"calibrate {base}"
        row.update(
            amax=a,
            scale=int8_scale(a),
            expected_mse=float(expected_mse(hset.tensors[name], [a])[0]),  # of this amax, not auto's
            clipped=saturated_fraction(hset.tensors[name], a),
            method=w.get("method", base),
            criterion="consumer_error" if by == "consumer_error" else by,
        )
        if by == "consumer_error":
            row.update(consumer_error=w["error"], consumer_error_auto=w["error_auto"])
    version = trt_cache.encode_version(trt_cache.installed_trt_version() or trt_cache.DEFAULT_TRT_VERSION)
    staged = stage_scales(table, hset, model_path, fingerprint_file(model_path), version, "EntropyCalibration2")
    return table, staged


def publish(tx, p, doc: dict) -> dict[str, Path]:
    import calibkit.quantize.report as report
    from calibkit.qdq.export import export_qdq
    from calibkit.qdq.files import copy_into
    from calibkit.sensitivity.exclusions import regex

    out = tx.directory
    stem = p.model_path.stem
    paths: dict[str, Path] = {}
    with scratch("publish") as tmp:
        rec = Path(tmp) / f"{stem}.recovered.onnx"
        onnx.save_model(p.model, str(rec))
        _, staged = scales_for(p.hset, p.amax, p.why, rec)
        for key, (name, text) in staged.items():
            paths[key] = tx.write_text(out / name, text)
        paths["recovered"] = tx.write_with(out / rec.name, lambda fh: copy_into(rec, fh))
        excluded = regex(p.excluded) if p.excluded else None
        qdq = export_qdq(
            p.model, p.amax, Path(tmp) / f"{stem}.qdq.onnx", exclude_nodes=excluded, precision=p.o.precision
        )
        paths["qdq"] = tx.write_with(out / qdq.name, lambda fh: copy_into(qdq, fh))
        paths["histograms"] = store.save(p.hset, out / "histograms.npz", tx)
        if p.sufficiency is not None:
            paths["sufficiency"] = tx.write_text(
                out / "sufficiency.json", json.dumps(p.sufficiency.to_dict(), indent=1) + "\n"
            )
        text = "".join(f"{n}\n" for n in p.excluded)
        paths["keep_fp16"] = tx.write_text(out / "keep-fp16.txt", text)
        paths["exclude"] = tx.write_text(out / "exclude-nodes.txt", text)
        doc["files"] = sorted([v.name for v in paths.values()] + ["quantize.json", "report.html"])
        paths["json"] = tx.write_text(out / "quantize.json", dumps(doc))
        paths["report"] = tx.write_text(out / "report.html", report.page(without_timings(doc)))
    return paths


def without_timings(x):
    """``x`` without its "seconds" fields: the files of a run are the same bytes however fast it ran."""
    if isinstance(x, dict):
        return {k: without_timings(v) for k, v in x.items() if k != "seconds"}
    if isinstance(x, list):
        return [without_timings(v) for v in x]
    return x


def dumps(doc: dict) -> str:
    """quantize.json: NaN/inf as null (fails every target), no timings."""
    from calibkit.sensitivity.report import finite_or_null

    return json.dumps(finite_or_null(without_timings(doc)), indent=1, allow_nan=False) + "\n"
