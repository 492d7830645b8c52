"""``calibkit drift MODEL --histograms H --data NEW``: is recalibration due?"""

from __future__ import annotations

import math
import textwrap

import click

from calibkit.cli.options import data_options, feed_from, feed_options, method_from, preprocess_from, user_errors


@click.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option(
    "--histograms",
    required=True,
    type=click.Path(dir_okay=False),
    help="The calibration's histograms.npz (from calibkit calibrate).",
)
@data_options
@feed_options
@click.option(
    "--method",
    default="entropy",
    show_default=True,
    metavar="NAME[:ARG]",
    help="Method that chose the calibrated amax from the histograms (and chooses the fresh one).",
)
@click.option(
    "--scales",
    type=click.Path(dir_okay=False),
    help="Take the calibrated amax from this scales.json instead of --method on the histograms.",
)
@click.option(
    "--max-clip",
    type=float,
    metavar="F",
    help=(
        "Exit 3 when, for any tensor, the fraction of new values the calibrated amax saturates exceeds "
        "the calibration's own by more than F (0.001: 0.1% of its values)."
    ),
)
@click.option(
    "--allow-preprocess-mismatch", is_flag=True, help="Accept preprocessing flags that differ from the calibration's."
)
@click.option("--force", is_flag=True, help="Accept histograms/scales whose model fingerprint differs.")
@click.option(
    "-o",
    "--output",
    "output_dir",
    type=click.Path(file_okay=False),
    help="Write drift.json and the new data's histograms.npz here.",
)
@click.option("--limit", type=click.IntRange(min=0), default=15, show_default=True, help="Rows to print.")
@user_errors
def drift(model, histograms, scales, max_clip, allow_preprocess_mismatch, force, output_dir, limit, **kw) -> None:
    """Stream NEW data through the model and compare it with a calibration, per tensor.

    \b
    clipped    fraction of values the calibrated amax saturates: calibration -> new data
    KS         distance between the calibration's and the new |x| distributions (0..1)
    MSE ratio  expected INT8 error of the new values under the calibrated amax / under an
               amax freshly chosen on the new data (1: the old scales are as good)

    Same data options, preprocessing (the calibration's, for image folders), batch axes and
    GPU path as calibrate. Exit 0, or 3 when --max-clip is exceeded (recalibrate).
    """
    from calibkit.checks.drift import drift as run
    from calibkit.cli.calibrate_cmd import _total
    from calibkit.cli.progress import err, out, sample_progress, table

    method, cfg = method_from({**kw, "percentile": None, "levels": None, "start_bin": None})
    kw.pop("method", None)
    pre = preprocess_from(kw)
    feed = feed_from(kw)
    if kw["data"] is None:
        raise click.UsageError("give --data: the new data to compare with the calibration")
    with sample_progress("collecting") as (set_total, update):
        res = run(
            model,
            histograms,
            kw["data"],
            method=method,
            config=cfg,
            scales=scales,
            max_clip=max_clip,
            output_dir=output_dir,
            batch_size=kw["batch_size"],
            preprocess=pre,
            allow_preprocess_mismatch=allow_preprocess_mismatch,
            device=kw["device"],
            feed=feed,
            force=force,
            progress=update,
            on_source=lambda s: set_total(_total(s.num_samples(), feed.max_samples)),
        )
    out.print(f"drift: {res.new_samples} new samples vs {res.calib_samples} calibration samples; amax by {res.method}")
    rows = [
        [
            r.tensor,
            f"{r.clipped_calib:.3%} -> {r.clipped_new:.3%}",
            f"{r.distance:.3f}" if math.isfinite(r.distance) else "-",
            _ratio(r.mse_ratio),
            f"{r.absmax_calib:.4g} -> {r.absmax_new:.4g}",
        ]
        for r in res.rows[:limit]
    ]
    if rows:
        out.print(table("tensors, most new clipping first", ["tensor", "clipped", "KS", "MSE ratio", "max |x|"], rows))
    if len(res.rows) > limit:
        out.print(f"... {len(res.rows) - limit} more (--limit; all in drift.json with -o)")
    if res.missing:
        out.print(_wrap(f"not reached by the new data ({len(res.missing)}): " + ", ".join(res.missing[:limit])))
    for kind, path in res.outputs.items():
        out.print(f"wrote {kind:10s} {path}")
    if res.nonfinite:
        shown = ", ".join(f"{k!r} ({n} NaN, {i} Inf)" for k, (n, i) in list(res.nonfinite.items())[:5])
        more = f", ... {len(res.nonfinite) - 5} more" if len(res.nonfinite) > 5 else ""
        err.print(
            _wrap(
                f"calibkit: warning: the new data has NaN/Inf values the calibration never saw: {shown}{more}; "
                "they are left out of every histogram (check the data or its preprocessing)"
            )
        )
    if max_clip is None:
        return
    due = res.due()
    if res.passed():
        out.print(
            _wrap(
                f"PASS: no tensor clips more than {max_clip:.3%} of the new values beyond what the calibration clipped (--max-clip {max_clip:g})"
            )
        )
        return
    names = ", ".join(f"{r.tensor!r} (+{r.excess:.3%})" for r in due[:5]) + (
        f", ... {len(due) - 5} more" if len(due) > 5 else ""
    )
    why = [f"{len(due)} tensor(s) clip more new values: {names}"] if due else []
    if res.missing:
        why.append(f"{len(res.missing)} calibrated tensor(s) got no values")
    if res.nonfinite:
        why.append(f"{len(res.nonfinite)} tensor(s) got NaN/Inf values the calibration never saw")
    line = f"RECALIBRATE (--max-clip {max_clip:g}): " + "; ".join(why)
    out.print(_wrap(line))
    err.print(f"calibkit: drift: {line}")
    raise SystemExit(3)


def _ratio(v: float) -> str:
    if not math.isfinite(v):
        return "inf (fresh amax: no error)"
    return f"{v:.3g}"


def _wrap(text: str) -> str:
    return textwrap.fill(text, 80, break_on_hyphens=False, break_long_words=False)
