"""JSON documents and HTML sections of ``sensitivity`` and ``fallback``."""

from __future__ import annotations

import html as H
import json
import math
from pathlib import Path

import numpy as np

from calibkit.outputs.atomic import write_text
from calibkit.report import figures
from calibkit.report import html as R
from calibkit.sensitivity.search import Fallback, Sensitivity, drop

FORMAT = "calibkit-sensitivity"
TOP = 5  # layers whose histograms and best method are shown


def _unit(s, i: int) -> dict:
    u = s.sw.units[i]
    return {"layer": u.name, "op_type": u.op_type, "nodes": list(u.nodes), "tensors": list(u.tensors)}


def _metrics(r: dict, ref_task) -> dict:
    out = {"min_cosine": r.get("min_cosine"), "cosine": r.get("cosine")}
    if ref_task is not None:
        out["task"] = r.get("task")
        out["task_drop"] = drop(r, ref_task)
    return out


def best_methods(hist, table_method: str) -> dict:
    """Each candidate method's threshold on this histogram (``auto``'s candidates) with its
    expected INT8 error and saturated fraction; ``auto``'s choice is the method that would suit
    the tensor best."""
    from calibkit.methods.auto import AutoConfig, choose
    from calibkit.numerics.clipping import saturated_fraction

    _, detail = choose(hist, AutoConfig())
    rows = {
        spec: {**r, "clipped": float(saturated_fraction(hist, r["amax"]))} for spec, r in detail["candidates"].items()
    }
    return {"best": detail["method"], "calibrated_with": table_method, "methods": rows}


def _common(s, sens: Sensitivity, ev, table, model_info: dict, gates: dict, default: bool, scales: str) -> dict:
    ref_task = sens.ref_task
    return {
        "format": FORMAT,
        "version": 1,
        "model": model_info,
        "scales": scales,
        "method": f"{table.method} {table.params}",
        "data": {
            "source": s.vs.description,
            "fingerprint": s.vs.fingerprint,
            "samples": s.vs.n,
            "task_metric": s.vs.task,
        },
        "target": gates,
        "target_default": default,
        "fp32_task": ref_task,
        "all_int8": _metrics(sens.all_int8, ref_task),
        "units": len(s.sw.units),
        "ranking": "output-cosine score, then task score"
        if not (list(gates) == ["max_accuracy_drop"])
        else "task score, then output-cosine score",
        "layers": [
            {
                "rank": k + 1,
                **_unit(s, ls.index),
                "score_task_points": ls.score[0] if ref_task is not None else None,
                "score_cosine": ls.score[1],
                "only_this_int8": _metrics(ls.only, ref_task),
                "all_but_this_int8": _metrics(ls.all_but, ref_task),
            }
            for k, ls in enumerate(sens.ranked)
        ],
        "evaluations": {"spent": ev.spent, "run": ev.ran, "reused_from_earlier_runs": ev.reused},
        "execution": {
            "workers": s.workers,
            "ray": s.ray,
            "per_second_after_startup": ev.steady_rate,
        },  # not written: files do not depend on it
        "reference_from_cache": s.ref_cached,
    }


def sensitivity_doc(s, sens, ev, table, model_info, gates, default, scales) -> dict:
    doc = _common(s, sens, ev, table, model_info, gates, default, scales)
    doc["kind"] = "sensitivity"
    return doc


def fallback_doc(
    s, sens, ev, fb: Fallback, table, model_info, gates, default, scales, nodes: list[str], vdoc: dict
) -> dict:
    doc = _common(s, sens, ev, table, model_info, gates, default, scales)
    doc["kind"] = "fallback"
    after = next(c for c in vdoc["candidates"] if c["label"].startswith("INT8 + fallback"))
    before = next(c for c in vdoc["candidates"] if c["label"].startswith("INT8, every"))
    doc["search"] = {
        "met": fb.met,
        "kept": [_unit(s, i) for i in fb.kept],
        "result": _metrics(fb.result, sens.ref_task),
        "steps": fb.steps,
    }
    doc["exclude_nodes"] = nodes
    doc["verification"] = {
        "pass": after["pass"],
        "failures": after["failures"],
        "after": _cand(after),
        "before": _cand(before),
        "fp32": _cand(vdoc["candidates"][0]),
    }
    doc["pass"] = bool(fb.met and after["pass"])
    want = " and ".join(
        f"worst output cosine >= {v:.10g}" if k == "min_cosine" else f"task drop <= {v:.10g} points"
        for k, v in gates.items()
    )
    doc["target_text"] = want
    if not fb.met and fb.kept and len(fb.kept) == len(s.sw.units):
        doc["verdict"] = (
            f"only the float model meets the target ({want}): no configuration with any of the {len(s.sw.units)} layers in INT8 does"
        )
    elif not fb.met:
        doc["verdict"] = (
            f"no set of layers kept in float meets the target ({want}); best reached keeps {len(fb.kept)} of {len(s.sw.units)} layers in float"
        )
    elif not after["pass"]:
        doc["verdict"] = f"the search's configuration failed full validation: {'; '.join(after['failures'])}"
    else:
        doc["verdict"] = (
            f"target ({want}) met with {len(fb.kept)} of {len(s.sw.units)} layers kept in float, verified by full validation"
        )
    return doc


def _cand(c: dict) -> dict:
    outs = c.get("outputs") or {}
    cos = [o.get("cosine") for o in outs.values()]
    return {
        "label": c["label"],
        "pass": c["pass"],
        "accuracy": c.get("accuracy"),
        "accuracy_drop_pp": c.get("accuracy_drop_pp"),
        "min_cosine": min((x for x in cos if isinstance(x, (int, float))), default=None),
    }


RUNTIME = ("execution", "seconds")  # how this run went (workers, Ray, speed): in the result, not in the files


def write_json(doc: dict, path: Path, tx) -> Path:
    """The document as written: the same bytes whatever --workers/--ray and however fast."""
    doc = {k: v for k, v in doc.items() if k not in RUNTIME}
    return write_text(path, json.dumps(finite_or_null(doc), indent=1, allow_nan=False, default=_num) + "\n", tx)


def finite_or_null(x):
    """NaN/inf (a metric that failed) are written as null: JSON has no NaN, and null fails every target."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: finite_or_null(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [finite_or_null(v) for v in x]
    if isinstance(x, np.generic):
        return finite_or_null(x.item())
    return x


def _num(v):
    return None if isinstance(v, float) else str(v)


def _chart(doc: dict) -> str:
    plt = figures._plt()
    layers = doc["layers"][:30]
    names = [figures._t(x["layer"]) for x in layers][::-1]
    key = "score_task_points" if doc["ranking"].startswith("task") else "score_cosine"
    vals = [figures._finite(x[key] if x[key] is not None else 0.0, floor=0.0, cap=1e9) for x in layers][::-1]
    fig, ax = plt.subplots(figsize=(7.5, 0.25 * len(names) + 1.0))
    ax.barh(range(len(names)), vals, color="#b3261e")
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel(
        "sensitivity score ("
        + ("task points" if key.startswith("score_task") else "output 1 - cosine")
        + "; alone in INT8 + recovered when kept in float)"
    )
    ax.set_title(f"most sensitive layers (top {len(names)} of {doc['units']})")
    return figures._uri(fig)


def section(doc: dict, s, hists) -> str:
    e = H.escape
    ev = doc["evaluations"]
    rows = [
        {
            "#": x["rank"],
            "layer": x["layer"],
            "op": x["op_type"],
            "alone in INT8: cosine": x["only_this_int8"]["min_cosine"],
            "all but it INT8: cosine": x["all_but_this_int8"]["min_cosine"],
            **(
                {
                    "alone: task drop": x["only_this_int8"].get("task_drop"),
                    "all but it: task drop": x["all_but_this_int8"].get("task_drop"),
                }
                if doc["fp32_task"] is not None
                else {}
            ),
            "score": x["score_task_points"] if doc["ranking"].startswith("task") else x["score_cosine"],
        }
        for x in doc["layers"]
    ]
    parts = [
        f'<h2>Layer sensitivity</h2><p class="sub">{doc["units"]} quantized layers (as TensorRT fuses them: Conv/Gemm/MatMul with a joined residual Add) · '
        f"{doc['data']['samples']} validation samples · ranked by {e(doc['ranking'])} · all layers INT8: worst output cosine {R.fmt(doc['all_int8']['min_cosine'], 6)}"
        + (f", task drop {R.fmt(doc['all_int8'].get('task_drop'), 3)} points" if doc["fp32_task"] is not None else "")
        + f" · {ev['spent']} evaluations ({ev['run']} run, {ev['reused_from_earlier_runs']} reused from an earlier run)</p>",
        f'<img alt="sensitivity ranking" src="{_chart(doc)}">',
        R._table(rows),
    ]
    if hists is not None:
        parts.append("<h2>Most sensitive layers: histograms and the method that suits each</h2>")
        for x in doc["layers"][:TOP]:
            for t in x["tensors"]:
                if t not in hists.tensors:
                    continue
                h = hists.tensors[t]
                bm = best_methods(h, doc["method"])
                x.setdefault("best_method", {})[t] = bm
                used = {f"calibrated ({doc['method'].split()[0]})": s.amax[t]} if s.amax.get(t) else {}
                parts.append(
                    f"<p><b>{e(x['layer'])}</b> input <code>{e(t)}</code>: lowest expected INT8 error with <b>{e(bm['best'])}</b> ("
                    + ", ".join(
                        f"{e(k)} {R.fmt(v['expected_mse'], 3)}"
                        for k, v in sorted(bm["methods"].items(), key=lambda kv: kv[1]["expected_mse"])
                    )
                    + ")</p>"
                )
                parts.append(
                    f'<img alt="thresholds for {e(t)}" src="{figures.threshold_plot(t, h, used, figures.palette(list(used)))}">'
                )
    else:
        parts.append(
            '<p class="note">No histograms.npz beside the scales: layer histograms and per-layer method advice are not shown.</p>'
        )
    return "\n".join(parts)


def page(title: str, body: str) -> str:
    return R.page(title, body)


def fallback_page(doc: dict, v, vdoc: dict, s, hists, title: str) -> str:
    e = H.escape
    ver = doc["verification"]
    steps = R._table(
        [
            {
                "step": st["step"],
                "kept in float": st["kept"],
                "meets target": st["meets"],
                "worst cosine": st["min_cosine"],
                "task": st.get("task"),
            }
            for st in doc["search"]["steps"]
        ]
    )
    kept = ", ".join(f"<code>{e(n)}</code>" for n in doc["exclude_nodes"]) or "none"
    cmds = "".join(f'<p>{e(k)}:</p><pre class="paste">{e(c)}</pre>' for k, c in doc.get("commands", {}).items())
    banner = "pass" if doc["pass"] else "fail"
    body = (
        f'<h2>Fallback search</h2><div class="banner {banner}">{e(doc["verdict"])}</div>'
        f"<p>Kept in float: {kept}</p>"
        f"<p>Before / after (full validation of the exported Q/DQ models): every layer INT8 — worst cosine {R.fmt(ver['before']['min_cosine'], 6)}"
        + (f", accuracy {R.fmt(ver['before']['accuracy'], 4)}%" if ver["before"]["accuracy"] is not None else "")
        + f"; with the fallback — worst cosine {R.fmt(ver['after']['min_cosine'], 6)}"
        + (
            f", accuracy {R.fmt(ver['after']['accuracy'], 4)}% (FP32 {R.fmt(ver['fp32']['accuracy'], 4)}%)"
            if ver["after"]["accuracy"] is not None
            else ""
        )
        + f". {doc['evaluations']['spent']} evaluations spent.</p>{cmds}<details><summary>search steps</summary>{steps}</details>"
        + section(doc, s, hists)
    )
    return R.render(vdoc, v, hists, title, extra=body)
