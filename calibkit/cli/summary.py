"""Human summaries printed by the CLI."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from calibkit.cli.progress import err, out, table
from calibkit.errors import CalibkitError
from calibkit.numerics.formats import INT8


def print_calibration(result) -> None:
    from calibkit.artifacts.scales import most_clipped, nonfinite

    t = result.table
    hs = result.histograms
    if result.reused:
        out.print(f"reused {result.reused}: no inference run")
    coll = result.collection
    rows = [
        ["method", f"{t.method} {json.dumps(t.params) if t.params else ''}"],
        ["tensors", len(t.tensors)],
        ["samples", hs.samples],
        [
            "collect",
            f"{result.timings['collect']:.2f} s"
            + (
                f" ({coll.stats.samples / max(coll.seconds, 1e-9):,.0f} samples/s, {', '.join(coll.providers)})"
                if coll
                else ""
            ),
        ],
        [
            "run batch",
            (
                f"{min(coll.stats.run_batch, max(coll.stats.samples, 1))} samples, {coll.stats.batches} runs"
                if coll
                else "-"
            ),
        ],
        ["threshold", f"{result.timings['threshold']:.2f} s"],
    ]
    if hs.meta.get("dropped_samples"):
        rows.append(["dropped", f"{hs.meta['dropped_samples']} samples (model fixes the batch size)"])
    out.print(table("calibration", ["", ""], rows, keep=1))
    clipped = most_clipped(t)
    if clipped:
        rows = [
            [n, f"{c:.4%}", f"{t.tensors[n]['amax']:.5g}", f"{t.tensors[n].get('absmax', float('nan')):.5g}"]
            for n, c in clipped
        ]
        out.print(table("most clipped tensors", ["tensor", "clipped", "amax", "max |x|"], rows))
    bad = nonfinite(t)
    if bad:
        out.print(
            table("tensors with NaN/Inf (excluded from histograms)", ["tensor", "NaN", "Inf"], [list(b) for b in bad])
        )
        shown = ", ".join(f"{n!r} ({a} NaN, {b} Inf)" for n, a, b in bad[:3]) + (
            f", ... {len(bad) - 3} more" if len(bad) > 3 else ""
        )
        err.print(
            f"calibkit: warning: {len(bad)} tensor(s) held NaN/Inf values during calibration: {shown}; they are left "
            "out of the histograms (check the data or its preprocessing: validate fails on such data)"
        )
    flat = [n for n, v in t.tensors.items() if v.get("degenerate") and not v.get("nan") and not v.get("inf")]
    if flat:
        shown = ", ".join(map(repr, flat[:3])) + (f", ... {len(flat) - 3} more" if len(flat) > 3 else "")
        err.print(
            f"calibkit: warning: {len(flat)} tensor(s) held only zeros over the data: {shown}; their scale is a "
            "placeholder (amax 1.0, `degenerate` in scales.json) and a validation that compares zeros with zeros "
            "passes whatever the scale: check that the data exercises the model"
        )
    picks = auto_choices(t)
    if picks:
        out.print("auto chose, per tensor (least expected INT8 MSE): " + ", ".join(f"{m} {n}" for m, n in picks))
    for kind, path in result.outputs.items():
        out.print(f"wrote {kind:13s} {path}")
    print_clip_warnings(result.clip_warnings, result.warn_clip, result.outputs.get("scales"))


def auto_choices(t) -> list[tuple[str, int]]:
    """(method, tensors) an auto table chose, most used first; [] for other methods."""
    from collections import Counter

    if t.method != "auto":
        return []
    counts = Counter(str(v.get("method", "?")) for v in t.tensors.values())
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def print_clip_warnings(ws, limit: float, where=None, shown: int | None = None) -> None:
    """Every clip warning (up to ``shown``) on stdout, and a one-line pointer on stderr."""
    from calibkit.numerics.clipping import SHOWN

    if not ws:
        return
    shown = SHOWN if shown is None else shown
    head = f"WARNING: {len(ws)} tensor(s) clip more than {limit:.4g} ({limit:.4%}) of their values (--warn-clip):"
    lines = [f"  {w.message()}" for w in ws[:shown]]
    if len(ws) > shown:
        lines.append(
            f"  ... and {len(ws) - shown} more" + (f' (every one under "clip_warnings" in {where})' if where else "")
        )
    out.print("\n".join([head, *lines]))
    err.print(
        f"calibkit: warning: {len(ws)} tensor(s) clip more than {limit:.4%} of their values; worst {ws[0].tensor!r} ({ws[0].clipped:.4%}); see the warnings above"
    )


def _num(v) -> str:
    return f"{v:.4g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else "-"


def _layer_report(path: Path, limit: int) -> bool:
    """A TensorRT layer report (calibkit's, or trtexec's --exportLayerInfo JSON): print it."""
    from calibkit.trt import layer_report

    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return False
    if not (isinstance(doc, dict) and (doc.get("format") == layer_report.FORMAT or "Layers" in doc)):
        return False
    rep = doc if doc.get("format") == layer_report.FORMAT else layer_report.report(doc, where=str(path))
    out.print(f"{path}: {layer_report.summary(rep)}")
    rows = [
        [n, e.get("op") or "-", "/".join(e["precisions"]), len(e["layers"])]
        for n, e in list(rep["nodes"].items())[:limit]
    ]
    out.print(table("precision per ONNX node", ["node", "op", "ran in", "layers"], rows))
    if len(rep["nodes"]) > limit:
        out.print(f"... {len(rep['nodes']) - limit} more (--limit)")
    for f in rep["fallbacks"]:
        out.print(f"not in INT8: {f['node']} ({f['op']}) ran in {'/'.join(f['got']) or '?'}")
    if rep["layers_without_node"]:
        out.print(f"{len(rep['layers_without_node'])} layers from no ONNX node (reformats, ...)")
    return True


def inspect_file(path: Path, limit: int) -> None:
    if not path.is_file():
        from calibkit.graph.model import not_a_file

        raise CalibkitError(
            f"{path} {not_a_file(path)}; inspect takes a .cache, scales.json, histograms.npz or a build's layers.json file"
        )
    raw = path.read_bytes()[:64]
    if zipfile.is_zipfile(path) or raw.startswith(b"PK"):  # a truncated zip is still a histogram file: say what is wrong with it
        from calibkit.artifacts import histograms as store

        hs = store.load(path)
        out.print(
            f"{path}: {len(hs.tensors)} tensors, {hs.samples} samples, model {hs.meta.get('model_name')} {hs.meta.get('model_fingerprint')}"
        )
        out.print(f"data {hs.meta.get('data')} {hs.meta.get('data_fingerprint')}")
        rows = [
            [n, f"{h.min:.5g}", f"{h.max:.5g}", h.count, h.nan, h.inf, f"2^{h.exp}"]
            for n, h in list(hs.tensors.items())[:limit]
        ]
        out.print(table("histograms", ["tensor", "min", "max", "count", "NaN", "Inf", "range"], rows))
        return
    head = raw.lstrip()
    if head.startswith(b"{") and _layer_report(path, limit):
        return
    if head.startswith(b"["):
        raise CalibkitError(
            f"{path} is not valid JSON calibkit reads: a build's layers.json is a JSON object (trtexec --exportLayerInfo); "
            "write it again with the build"
        )
    if head.startswith(b"{"):
        from calibkit.artifacts import scales

        st = scales.read(path)
        out.print(
            f"{path}: method {st.method} {st.params}, {len(st.tensors)} tensors, model {st.meta.get('model', {}).get('name')}"
        )
        auto = st.method == "auto"
        rows = [
            [
                n,
                f"{v['amax']:.6g}",
                f"{st.scales()[n]:.6g}",
                f"{float(v.get('clipped') or 0):.4%}",
                _num(v.get("expected_mse")),
                *([str(v.get("method", "?"))] if auto else []),
            ]
            for n, v in list(st.tensors.items())[:limit]
        ]
        out.print(
            table("scales", ["tensor", "amax", "scale", "clipped", "expected MSE", *(["chosen"] if auto else [])], rows)
        )
        if len(st.tensors) > limit:
            out.print(f"... {len(st.tensors) - limit} more (--limit)")
        picks = auto_choices(st)
        if picks:
            out.print("auto chose: " + ", ".join(f"{m} {n}" for m, n in picks))
        from calibkit.numerics import clipping

        recorded = (st.meta.get("clip_warnings") or {}).get("limit")
        warn = (
            recorded
            if isinstance(recorded, (int, float)) and not isinstance(recorded, bool) and 0 <= recorded <= 1
            else clipping.DEFAULT_WARN_CLIP
        )
        print_clip_warnings(clipping.warnings(st, warn), warn, path, shown=limit)
        return
    from calibkit.artifacts import trt_cache as cache

    c = cache.read(path)
    out.print(
        f"{path}: header {c.header()} (TensorRT version code {c.version}, algorithm {c.algorithm}), {len(c.scales)} tensors"
    )
    rows = [[n, f"{s:.6g}", f"{s * INT8.qmax:.6g}"] for n, s in list(c.scales.items())[:limit]]
    out.print(table("cache", ["tensor", "scale", "amax"], rows))
    if len(c.scales) > limit:
        out.print(f"... {len(c.scales) - limit} more (--limit)")


def print_sufficiency(report, shown: int = 10) -> None:
    """calibrate --shards: the tensors whose amax moves most across parts, and the verdict."""
    import textwrap

    rows = [
        [r.tensor, f"{r.amax:.5g}", f"{min(r.parts):.5g} .. {max(r.parts):.5g}", f"{r.spread:.1%}", f"+{r.regret:.1%}"]
        for r in report.rows[:shown]
    ]
    if rows:
        out.print(
            table(
                f"amax across {report.k} parts (samples per part: {', '.join(map(str, report.samples))})",
                ["tensor", "whole set", "parts", "spread", "error cost"],
                rows,
                keep=1,
            )
        )
    word = "ENOUGH DATA" if report.enough else "NOT ENOUGH DATA"
    out.print(textwrap.fill(f"{word}: {report.verdict()}", 80, break_on_hyphens=False, break_long_words=False))
