"""``calibkit diff --report``: one self-contained HTML page, the largest amax changes plotted."""

from __future__ import annotations

import html
import math

from calibkit.checks.diff import Diff
from calibkit.report import figures
from calibkit.report.html import _table, page

PLOTTED = 30


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{v:.3%}"


def change_figure(d: Diff, n: int = PLOTTED) -> str | None:
    """Horizontal bars of the ``n`` largest amax changes, in percent (B vs A), largest on top."""
    rows = [r for r in d.rows[:n] if math.isfinite(r.ratio)]
    if not rows:
        return None
    plt = figures._plt()
    fig, ax = plt.subplots(figsize=(7.5, 0.6 + 0.22 * len(rows)))
    vals = [(r.ratio - 1.0) * 100.0 for r in reversed(rows)]
    ax.barh(range(len(rows)), vals, color=["#d62728" if v > 0 else "#1f77b4" for v in vals])
    ax.set_yticks(range(len(rows)), [figures._t(r.tensor) for r in reversed(rows)], fontsize=7)
    ax.axvline(0, color="#444444", lw=0.8)
    ax.set_xlabel("amax change B vs A (%): red = B larger, blue = B smaller")
    ax.grid(axis="x", alpha=0.3)
    return figures._uri(fig)


def render(d: Diff, limit: float | None = None, shown: int = 200) -> str:
    esc = html.escape
    parts = [
        f"<p>A: <code>{esc(d.a.path)}</code> ({esc(d.a.kind)}, {esc(d.a.method)}, {len(d.a.amax)} tensors)<br>"
        f"B: <code>{esc(d.b.path)}</code> ({esc(d.b.kind)}, {esc(d.b.method)}, {len(d.b.amax)} tensors)</p>",
        f"<p>{esc(summary_line(d, limit))}</p>",
    ]
    uri = change_figure(d)
    if uri:
        parts.append(f'<img alt="largest amax changes" src="{uri}">')
    rows = [
        {
            "tensor": r.tensor,
            "amax A": f"{r.amax_a:.5g}",
            "amax B": f"{r.amax_b:.5g}",
            "change": f"{(r.ratio - 1.0):+.2%}" if math.isfinite(r.ratio) else "–",
            "clipped A": _pct(r.clipped_a),
            "clipped B": _pct(r.clipped_b),
            "method A": r.method_a,
            "method B": r.method_b,
        }
        for r in d.rows[:shown]
    ]
    parts.append("<h2>Tensors, largest change first</h2>" + _table(rows))
    if len(d.rows) > shown:
        parts.append(f"<p>... and {len(d.rows) - shown} more (in the JSON).</p>")
    for title, names in (("Only in B (added)", d.added), ("Only in A (removed)", d.removed)):
        if names:
            parts.append(f"<h2>{title}</h2><p>" + ", ".join(f"<code>{esc(n)}</code>" for n in names) + "</p>")
    return page("calibkit diff", "\n".join(parts))


def summary_line(d: Diff, limit: float | None = None) -> str:
    """One sentence: how many tensors, the largest change, method changes, added/removed, verdict."""
    if d.rows:
        top = d.rows[0]
        big = f"largest amax change {top.change:.2%} ({top.tensor!r}: {top.amax_a:.5g} -> {top.amax_b:.5g})"
    else:
        big = "no tensor in common"
    text = (
        f"{len(d.rows)} tensor(s) in both; {big}; {len(d.method_changes())} changed method; "
        f"{len(d.added)} added, {len(d.removed)} removed"
    )
    if limit is not None:
        over = d.over(limit)
        if d.passed(limit):
            text += f". PASS: no amax moved more than {limit:.2%} (--max-change {limit:g})"
        else:
            why = []
            if over:
                why.append(f"{len(over)} tensor(s) moved more than {limit:.2%}")
            if d.added or d.removed:
                why.append("tensors were added or removed")
            if not d.rows:
                why.append("the two calibrations have no tensor in common: nothing was compared")
            text += f". FAIL (--max-change {limit:g}): " + " and ".join(why)
    return text
