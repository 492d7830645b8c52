"""Human summaries printed by the CLI."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from calibkit.cli.progress import out, table
from calibkit.errors import CalibkitError


def print_calibration(result) -> None:
    from calibkit.scales import most_clipped, nonfinite

    t = result.table
    hs = result.histograms
    if result.reused:
        out.print(f"reused {result.reused}: no inference run")
    coll = result.collection
    rows = [
        ["method", f"{t.method} {json.dumps(t.params) if t.params else ''}"],
        ["tensors", len(t.tensors)],
        ["samples", hs.samples],
        ["collect", f"{result.timings['collect']:.2f} s" + (f" ({coll.stats.samples / max(coll.seconds, 1e-9):,.0f} samples/s, {', '.join(coll.providers)})" if coll else "")],
        ["run batch", (f"{coll.stats.run_batch} samples, {coll.stats.batches} runs" if coll else "-")],
        ["threshold", f"{result.timings['threshold']:.2f} s"],
    ]
    if hs.meta.get("dropped_samples"):
        rows.append(["dropped", f"{hs.meta['dropped_samples']} samples (model fixes the batch size)"])
    out.print(table("calibration", ["", ""], rows, keep=1))
    clipped = most_clipped(t)
    if clipped:
        rows = [[n, f"{c:.4%}", f"{t.tensors[n]['amax']:.5g}", f"{t.tensors[n].get('absmax', float('nan')):.5g}"] for n, c in clipped]
        out.print(table("most clipped tensors", ["tensor", "clipped", "amax", "max |x|"], rows))
    bad = nonfinite(t)
    if bad:
        out.print(table("tensors with NaN/Inf (excluded from histograms)", ["tensor", "NaN", "Inf"], [list(b) for b in bad]))
    for kind, path in result.outputs.items():
        out.print(f"wrote {kind:13s} {path}")


def inspect_file(path: Path, limit: int) -> None:
    if not path.is_file():
        raise CalibkitError(f"{path} not found")
    if zipfile.is_zipfile(path):
        from calibkit import store

        hs = store.load(path)
        out.print(f"{path}: {len(hs.tensors)} tensors, {hs.samples} samples, model {hs.meta.get('model_name')} {hs.meta.get('model_fingerprint')}")
        out.print(f"data {hs.meta.get('data')} {hs.meta.get('data_fingerprint')}")
        rows = [[n, f"{h.min:.5g}", f"{h.max:.5g}", h.count, h.nan, h.inf, f"2^{h.exp}"] for n, h in list(hs.tensors.items())[:limit]]
        out.print(table("histograms", ["tensor", "min", "max", "count", "NaN", "Inf", "range"], rows))
        return
    head = path.read_bytes()[:64].lstrip()
    if head.startswith(b"{"):
        from calibkit import scales

        st = scales.read(path)
        out.print(f"{path}: method {st.method} {st.params}, {len(st.tensors)} tensors, model {st.meta.get('model', {}).get('name')}")
        rows = [[n, f"{v['amax']:.6g}", f"{st.scales()[n]:.6g}", f"{float(v.get('clipped') or 0):.4%}"] for n, v in list(st.tensors.items())[:limit]]
        out.print(table("scales", ["tensor", "amax", "scale", "clipped"], rows))
        return
    from calibkit import cache

    c = cache.read(path)
    out.print(f"{path}: header {c.header()} (TensorRT version code {c.version}, algorithm {c.algorithm}), {len(c.scales)} tensors")
    rows = [[n, f"{s:.6g}", f"{s * 127:.6g}"] for n, s in list(c.scales.items())[:limit]]
    out.print(table("cache", ["tensor", "scale", "amax"], rows))
    if len(c.scales) > limit:
        out.print(f"... {len(c.scales) - limit} more (--limit)")
