"""``report.html`` of ``calibkit quantize``: what each step bought, and what to do with the files."""

from __future__ import annotations

import html as H

from calibkit.report import html as R


def _f(v, digits: int = 4) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _table(head: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{H.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _stages(doc: dict) -> str:
    outs = list(doc["stages"][0]["cosine"]) if doc["stages"] else []
    task = doc["reference"].get("task") is not None
    head = ["step", f"compute layers in {doc.get('precision', 'int8').upper()}", "worst cosine"] + [f"cosine {o}" for o in outs]
    head += [f"task score (FP32 {_f(doc['reference'].get('task'), 2)})"] if task else []
    head += ["meets target", "kept"]
    rows = []
    for s in doc["stages"]:
        r = [H.escape(s["stage"]), f"{s['int8_layers']}/{s['layers']}", _f(s["min_cosine"])]
        r += [_f(s["cosine"].get(o)) for o in outs]
        r += [_f(s.get("task"), 2)] if task else []
        kept = "yes" if s.get("kept", True) else "no: " + H.escape(s.get("note", ""))
        r += ["yes" if s["meets"] else "<b>no</b>", kept]
        rows.append(r)
    return _table(head, rows)


def _thresholds(doc: dict) -> str:
    rows = [
        [
            H.escape(t),
            _f(w["amax"], 5),
            H.escape(str(w.get("method"))),
            _f(w.get("error"), 6),
            _f(w.get("error_auto"), 6),
        ]
        for t, w in doc["thresholds"].items()
        if w.get("by") == "consumer_error"
    ]
    rows.sort(key=lambda r: r[0])
    if not rows:
        return "<p>Every threshold is auto's (least expected INT8 MSE of the tensor itself).</p>"
    return (
        "<p>Inputs of weighted layers: the amax with the least error of the layers that read them "
        "(relative output error; auto's amax for comparison). Other tensors: auto.</p>"
        + _table(["tensor", "amax", "candidate", "consumer error", "at auto's amax"], rows)
    )


def _recovery(doc: dict) -> str:
    layers = doc["recovery"].get("layers", {})
    if not layers:
        return "<p>Weights were not changed (bias correction and adaptive rounding off).</p>"
    rows = [
        [
            H.escape(n),
            r["op"],
            r["rounding"],
            _f(r["error_nearest"], 6),
            _f(r["error"], 6),
            f"{100 * r['changed']:.1f}%",
            H.escape(r.get("bias", "off")),
            _f(r.get("bias_shift_max"), 5),
        ]
        for n, r in layers.items()
    ]
    skipped = doc["recovery"].get("skipped", {})
    extra = ""
    if skipped:
        extra = "<p>Not recovered: " + "; ".join(f"{H.escape(n)} ({H.escape(w)})" for n, w in skipped.items()) + "</p>"
    head = ["layer", "op", "rounding", "error, nearest", "error, chosen", "weights moved", "bias", "max bias shift"]
    return (
        "<p>Relative output error of each layer on calibration data (its input from the INT8 model "
        "with every earlier layer recovered; mean removed, since the corrected bias takes it).</p>"
        + _table(head, rows)
        + extra
    )


def _transforms(doc: dict) -> str:
    t = doc.get("transforms") or {}
    parts = []
    if t.get("equalize"):
        rows = [
            [
                H.escape(r["first"]),
                H.escape(r["second"]),
                str(r["channels"]),
                _f(r["range_ratio_before"], 2),
                _f(r["range_ratio_after"], 2),
            ]
            for r in t["equalize"]
        ]
        parts.append(
            "<h3>Cross-layer equalization</h3>"
            + _table(["first", "second", "channels", "range ratio before", "after"], rows)
        )
    if t.get("smoothquant"):
        rows = [
            [
                H.escape(r["tensor"]),
                "off" if r["alpha"] is None else str(r["alpha"]),
                _f(r["error_off"], 6),
                _f(r["error"], 6),
            ]
            for r in t["smoothquant"]
        ]
        parts.append(
            "<h3>SmoothQuant</h3><p>Alpha per tensor by the consumers' INT8 output error on calibration rows.</p>"
            + _table(["tensor", "alpha", "error without", "error chosen"], rows)
        )
    return "".join(parts) or "<p>No transform applied (no eligible pair or tensor, or switched off).</p>"


def page(doc: dict) -> str:
    files = doc.get("files", [])
    stem = doc["model"]["name"].rsplit(".", 1)[0]
    verdict = H.escape(doc["verdict"])
    kept = doc.get("kept_in_float") or []
    changed = (
        doc["recovery"].get("kept")
        or "equalize" in doc["transforms"].get("kept", [])
        or "smoothquant" in doc["transforms"].get("kept", [])
    )
    weights = (
        "Its weights carry what the kept steps changed: the original model with this cache loses that."
        if changed
        else "No kept step changed a weight: it is the input model, prepared for export (same function)."
    )
    body = f"""
<h2>{verdict}</h2>
{"".join(f'<p class="warn">Warning: {H.escape(w)}</p>' for w in doc.get("warnings", []))}
<p>Target: {H.escape(", ".join(f"{k} {v}" for k, v in doc["target"].items()))}
{"(default)" if doc.get("default_target") else ""}; judged on {doc["samples"]} samples of {H.escape(str(doc["search_set"]))}
(the search set: report held-out numbers from data the search never saw).</p>
<h2>What each step bought</h2>
{_stages(doc)}
<h2>Thresholds</h2>
{_thresholds(doc)}
<h2>Float transforms</h2>
{_transforms(doc)}
<h2>Weight recovery</h2>
{_recovery(doc)}
<h2>Kept in float</h2>
<p>{len(kept)} layers{": " + H.escape(", ".join(kept)) if kept else ""}</p>
<h2>Files</h2>
<ul>{"".join(f"<li>{H.escape(f)}</li>" for f in files)}</ul>
<p>TensorRT 11 (explicit quantization): build <code>{H.escape(stem)}.qdq.onnx</code>.
TensorRT 10 (implicit, calibration cache): build <code>{H.escape(stem)}.recovered.onnx</code> with
<code>{H.escape(stem)}.recovered.cache</code>, keeping the layers of <code>keep-fp16.txt</code> in FP16. {weights}</p>
"""
    return R.page(f"calibkit quantize: {doc['model']['name']}", body)
