"""``calibkit diff A B``: what changed between two calibrations (a CI check between builds)."""

from __future__ import annotations

import json
import math
import textwrap

import click

from calibkit.cli.options import user_errors


@click.command()
@click.argument("a", type=click.Path(dir_okay=False))
@click.argument("b", type=click.Path(dir_okay=False))
@click.option(
    "--max-change",
    type=float,
    metavar="F",
    help="Exit 3 when any tensor's amax moves by more than this fraction (0.05: 5%), or tensors appear or vanish.",
)
@click.option(
    "--method",
    default="entropy",
    show_default=True,
    metavar="NAME[:ARG]",
    help="Method that turns a histograms.npz side into amax values.",
)
@click.option("--limit", type=click.IntRange(min=0), default=20, show_default=True, help="Rows to print.")
@click.option("--report", type=click.Path(dir_okay=False), help="Write an HTML page with the largest changes plotted.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write every row as JSON.")
@user_errors
def diff(a, b, max_change, method, limit, report, json_path) -> None:
    """Compare two calibrations: scales.json, .cache or histograms.npz, in any pairing.

    Per tensor: amax of A and B and their ratio, the fraction of values clipped (where the
    file records or allows it), the method that chose it; tensors added and removed.
    Exit 0, or 3 when --max-change is exceeded.
    """
    from calibkit.checks.diff import diff_files
    from calibkit.cli.progress import err, out, table
    from calibkit.errors import CalibkitError
    from calibkit.outputs.atomic import write_text
    from calibkit.report.diff_page import render, summary_line

    if max_change is not None and not (math.isfinite(max_change) and max_change >= 0):
        raise CalibkitError(f"--max-change {max_change!r}: give a fraction >= 0, e.g. 0.05 for 5%")
    d = diff_files(a, b, method)
    out.print(f"A {a}: {d.a.kind}, {d.a.method}, {len(d.a.amax)} tensors")
    out.print(f"B {b}: {d.b.kind}, {d.b.method}, {len(d.b.amax)} tensors")
    rows = [
        [
            r.tensor,
            f"{r.amax_a:.5g}",
            f"{r.amax_b:.5g}",
            f"{r.ratio - 1.0:+.2%}" if math.isfinite(r.ratio) else "-",
            _clip(r.clipped_a, r.clipped_b),
            r.method_b if r.method_a == r.method_b else f"{r.method_a} -> {r.method_b}",
        ]
        for r in d.rows[:limit]
    ]
    if rows:
        out.print(table("largest changes", ["tensor", "amax A", "amax B", "change", "clipped A -> B", "method"], rows))
    if len(d.rows) > limit:
        out.print(f"... {len(d.rows) - limit} more (--limit, --json)")
    for label, names in (("added (only in B)", d.added), ("removed (only in A)", d.removed)):
        if names:
            shown = ", ".join(names[:limit]) + (f", ... {len(names) - limit} more" if len(names) > limit else "")
            out.print(textwrap.fill(f"{label}: {shown}", 80, break_on_hyphens=False, break_long_words=False))
    line = summary_line(d, max_change)
    out.print(textwrap.fill(line, 80, break_on_hyphens=False, break_long_words=False))
    if json_path:
        write_text(json_path, json.dumps(d.to_dict(max_change), indent=1, allow_nan=False) + "\n")
        out.print(f"wrote json   {json_path}")
    if report:
        write_text(report, render(d, max_change))
        out.print(f"wrote report {report}")
    if max_change is not None and not d.passed(max_change):
        err.print(f"calibkit: diff: {line.split('. ', 1)[-1]}")
        raise SystemExit(3)


def _clip(a: float | None, b: float | None) -> str:
    if a is None and b is None:
        return "-"
    f = lambda v: "?" if v is None else f"{v:.3%}"  # noqa: E731
    return f"{f(a)} -> {f(b)}"
