"""Render ``results.json`` (+ histograms and error distributions) into one HTML file."""

from __future__ import annotations

import html
import math
from pathlib import Path

import pandas as pd
from jinja2 import Environment, FileSystemLoader, select_autoescape

from calibkit.artifacts.histograms import HistogramSet
from calibkit.numerics.formats import INT8
from calibkit.report import figures
from calibkit.validate.engine import Evaluation
from calibkit.validate.metrics import with_noise

TEMPLATES = Path(__file__).with_name("templates")
WORST_LAYERS = 3


def fmt(v, digits=4):
    if v is None:
        return "–"
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "∞" if v > 0 else "–∞"
        return f"{v:.{digits}g}"
    return str(v)


def _table(rows: list[dict], cls: str = "") -> str:
    if not rows:
        return ""
    df = pd.DataFrame(rows)
    return df.to_html(
        index=False, escape=True, classes=f"tbl {cls}", border=0, formatters={c: fmt for c in df.columns}, na_rep="–"
    )


def points(v, samples: int | None) -> str:
    """Accuracy points (%) at the precision the data supports: one sample of N is 100/N points
    (497 samples: 0.2, so one decimal)."""
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
        return fmt(v)
    step = 100.0 / samples if samples else 0.01
    d = max(0, -math.floor(math.log10(step))) if step < 1 else 0
    text = f"{v:.{d}f}"
    return "0" if float(text) == 0 else text


def per_second(v) -> str:
    """A rate as a plain number: 14,032 samples/s, never 1.4e+04."""
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
        return fmt(v)
    return f"{v:,.0f}" if v >= 10 else f"{v:.2g}"


def plain(v) -> str:
    """A provenance/environment value as text, never a Python repr (None, lists, dicts)."""
    if v is None:
        return "none"
    if isinstance(v, (list, tuple)):
        return ", ".join(plain(x) for x in v) or "none"
    if isinstance(v, dict):
        return "; ".join(f"{k} {plain(x)}" for k, x in v.items()) or "none"
    return fmt(v) if isinstance(v, float) else str(v)


def best_line(doc: dict) -> str | None:
    """The banner's winner: one name, or every candidate tied for first place."""
    tested = [c for c in doc["candidates"][1:] if c.get("rank")]
    if not tested:
        return f"best candidate: {doc['best']}" if doc.get("best") else None
    first = [c["label"] for c in tested if str(c["rank"]).rstrip("=") == "1"]
    if len(first) > 1:
        return f"tied for best (within the run's noise): {', '.join(first)}"
    return f"best candidate: {first[0] if first else doc.get('best')}"


def summary_rows(doc: dict) -> list[dict]:
    samples = (doc.get("data") or {}).get("samples")
    rows = []
    for i, c in enumerate(doc["candidates"]):
        worst = min(
            (o["sqnr_db"] if not isinstance(o["sqnr_db"], str) else math.inf for o in c["outputs"].values()),
            default=None,
        )
        cos = min((o["cosine"] for o in c["outputs"].values()), default=None)
        rows.append(
            {
                "rank": c.get("rank") or "–",
                "candidate": c["label"],
                "verdict": "reference" if i == 0 else ("PASS" if c["pass"] else "FAIL"),
                "accuracy %": points(c["accuracy"], samples),
                "drop pp": points(c["accuracy_drop_pp"], samples),
                "worst SQNR dB": f"{worst:.1f}" if isinstance(worst, float) and math.isfinite(worst) else worst,
                "min cosine": cos,
                "median ms/batch": with_noise(c["latency"]["median_ms"], c["latency"].get("median_noise_ms")),
                "p99 ms/batch": fmt(c["latency"]["p99_ms"], 2),
                "samples/s": per_second(c["latency"]["throughput_sps"]),
                "how it ran": c["note"],
            }
        )
    return rows


def output_rows(doc: dict) -> list[dict]:
    rows = []
    for c in doc["candidates"][1:]:
        for name, o in c["outputs"].items():
            row = {
                "candidate": c["label"],
                "output": name,
                "max |err|": o["max_abs_err"],
                "mean |err|": o["mean_abs_err"],
                "rel err": o["rel_err"],
                "cosine": o["cosine"],
                "SQNR dB": o["sqnr_db"],
                "p50": o["abs_err_p50"],
                "p99": o["abs_err_p99"],
                "p99.9": o["abs_err_p99.9"],
                "NaN/Inf": o["nonfinite"],
            }
            if "top1_agreement" in o:
                row["top-1 agree"] = o["top1_agreement"]
                row["top-5 agree"] = o["top5_agreement"]
            rows.append(row)
    return rows


def layer_rows(doc: dict) -> list[dict]:
    rows = []
    for c in doc["candidates"]:
        for t, v in c["layers"].items():
            rows.append(
                {
                    "candidate": c["label"],
                    "tensor": t,
                    "SQNR dB (accumulated)": v["sqnr_db"],
                    "cosine": v["cosine"],
                    "local SQNR dB": _exact(v["local_sqnr_db"]),
                    "scale": v["scale"],
                }
            )
    rows.sort(
        key=lambda r: (
            r["candidate"],
            r["SQNR dB (accumulated)"] if not isinstance(r["SQNR dB (accumulated)"], str) else math.inf,
        )
    )
    return rows


def _exact(v):
    """Infinite SQNR is no error at all: say so instead of a bare ∞."""
    if isinstance(v, float) and math.isinf(v) and v > 0:
        return "∞ (exact)"
    if isinstance(v, str) and v.lower() in ("inf", "infinity"):
        return "∞ (exact)"
    return v


def render(doc: dict, ev: Evaluation | None, hists: HistogramSet | None, title: str, extra: str = "") -> str:
    """The validation report; ``extra``: an HTML section (already escaped) placed before the candidates."""
    cands = doc["candidates"]
    colors = figures.palette([c["label"] for c in cands])
    figs = {"layers": figures.layer_sqnr(cands, colors), "accuracy": figures.accuracy_bars(cands, colors)}
    thresholds = []
    int8 = [c for c in cands if c["layers"]]
    if int8 and hists is not None:
        for t in figures.worst_layers(cands, k=WORST_LAYERS)[: WORST_LAYERS * 2]:
            if t in hists.tensors:
                used = {
                    c["label"]: c["layers"][t]["scale"] * INT8.qmax
                    for c in int8
                    if t in c["layers"] and c["layers"][t]["scale"]
                }
                thresholds.append({"tensor": t, "uri": figures.threshold_plot(t, hists.tensors[t], used, colors)})
    errors = []
    if ev is not None:
        for name in ev.reference.outputs or (ev.candidates[0].outputs if ev.candidates else {}):
            per = {r.label: r.outputs[name].abs_err for r in ev.candidates if name in r.outputs}
            errors.append({"output": name, "uri": figures.error_distribution(name, per, colors)})
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html", "j2"]))
    tpl = env.get_template("report.html.j2")
    fallback = [
        (c["label"], {**c["fp16_fallback"], "passed": bool(c.get("pass"))}) for c in cands if c.get("fp16_fallback")
    ]
    return tpl.render(
        title=title,
        doc=doc,
        summary=_table(summary_rows(doc), "summary"),
        outputs=_table(output_rows(doc)),
        layers=_table(layer_rows(doc)),
        figs=figs,
        thresholds=thresholds,
        errors=errors,
        fallback=fallback,
        extra=extra,
        fmt=fmt,
        esc=html.escape,
        plain=plain,
        best=best_line(doc),
    )


def page(title: str, body: str) -> str:
    """A self-contained page in the report's style around ``body`` (already escaped HTML)."""
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html", "j2"]))
    return env.get_template("page.html.j2").render(title=title, body=body)
