"""CLI: sensitivity, fallback."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import click

from calibkit.cli.options import (
    compose,
    data_options,
    feed_from,
    feed_options,
    parallel_from,
    parallel_options,
    preprocess_from,
    user_errors,
)

search_options = compose(
    click.argument("model", type=click.Path(dir_okay=False)),
    click.option(
        "--scales",
        required=True,
        type=click.Path(dir_okay=False),
        help="scales.json from `calibkit calibrate` (histograms.npz beside it adds per-layer plots).",
    ),
    click.option(
        "-o",
        "--output-dir",
        required=True,
        type=click.Path(file_okay=False),
        help="Directory for the results (published as one set).",
    ),
    click.option(
        "--labels",
        type=click.Path(dir_okay=False),
        help="Labels .npy, one per validation sample (top-1 accuracy on the class-score output).",
    ),
    click.option(
        "--metric", metavar="FILE.py:FN", help="Task metric: FN(outputs: dict, labels) -> one score per sample."
    ),
    click.option("--min-cosine", type=float, help="Target: every output's cosine similarity to FP32 >= this."),
    click.option("--max-accuracy-drop", type=float, help="Target: task score drop vs FP32 <= this, percentage points."),
    click.option("--force", is_flag=True, help="Accept scales whose model fingerprint differs."),
    click.option(
        "--allow-preprocess-mismatch", is_flag=True, help="Use images preprocessed unlike the calibration data."
    ),
    parallel_options,
    data_options,
    feed_options,
    user_errors,
)


@contextlib.contextmanager
def _eta(label: str) -> Iterator:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from calibkit.cli.progress import err

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=err,
    )
    state: dict = {}

    def update(done: int, total: int) -> None:
        if "task" not in state:
            progress.start()
            state["task"] = progress.add_task(label, total=total)
        progress.update(state["task"], completed=done, total=total)

    try:
        yield update
    finally:
        if "task" in state:
            progress.stop()


def _args(kw: dict) -> dict:
    from calibkit.sensitivity import Target, check_target

    target = Target(kw.pop("min_cosine"), kw.pop("max_accuracy_drop"))
    check_target(target)
    par = parallel_from(kw)
    feed = feed_from(kw)
    pre = preprocess_from(kw)
    if kw.pop("device") == "cuda":
        raise click.BadParameter(
            "evaluations run on the CPU provider (exact INT8 emulation); use --device cpu or auto",
            param_hint="--device",
        )
    return {
        "target": target,
        **par,
        "feed": feed,
        "preprocess": pre,
        "labels": kw.pop("labels"),
        "metric": kw.pop("metric"),
        "batch_size": kw.pop("batch_size"),
        "force": kw.pop("force"),
        "allow_preprocess_mismatch": kw.pop("allow_preprocess_mismatch"),
    }


@click.command()
@search_options
def sensitivity(model, scales, output_dir, data, **kw) -> None:
    """Rank quantized layers by the output/task error INT8 in each one causes.

    Per layer (as TensorRT fuses them): the metric with only it in INT8 and with all but it;
    writes sensitivity.json and sensitivity.html to OUTPUT_DIR.
    """
    from calibkit.cli.progress import out, table
    from calibkit.report.html import fmt
    from calibkit.sensitivity import sensitivity as run

    args = _args(kw)
    with _eta("evaluations") as progress:
        res = run(model, scales, data, output_dir, progress=progress, **args)
    doc = res.doc
    rows = [
        [
            x["rank"],
            x["layer"],
            x["op_type"],
            fmt(x["only_this_int8"]["min_cosine"], 6),
            fmt(x["all_but_this_int8"]["min_cosine"], 6),
        ]
        for x in doc["layers"][:15]
    ]
    out.print(
        table(
            f"most sensitive layers ({len(doc['layers'])} in all; ranked by {doc['ranking']})",
            ["#", "layer", "op", "cos alone", "cos all-but"],
            rows,
            keep=2,
        )
    )
    ev = doc["evaluations"]
    out.print(
        f"all layers INT8: worst output cosine {fmt(doc['all_int8']['min_cosine'], 6)}; {ev['spent']} evaluations ({ev['reused_from_earlier_runs']} reused) in {doc['seconds']:.1f} s"
    )
    out.print(f"wrote {res.json} and {res.report}")


@click.command()
@search_options
def fallback(model, scales, output_dir, data, **kw) -> None:
    """Find the fewest layers to keep in float so a target holds, and verify it.

    Greedy by sensitivity, then pruned by bisection; the chosen configuration is exported and
    validated in full against the all-INT8 model. Writes exclude-nodes.txt (export-qdq
    --exclude-list), keep-fp16.txt (build --from-report), the Q/DQ model, fallback.json and
    report.html. Exit 3 when no configuration meets the target.
    """
    from calibkit.cli.progress import out
    from calibkit.errors import ThresholdFailed
    from calibkit.report.html import fmt
    from calibkit.sensitivity import fallback as run

    args = _args(kw)
    try:
        with _eta("evaluations") as progress:
            res = run(model, scales, data, output_dir, progress=progress, **args)
    except ThresholdFailed as exc:
        res = getattr(exc, "result", None)
        if res is None:
            raise
        _print_fallback(res, out, fmt)
        raise
    _print_fallback(res, out, fmt)


def _print_fallback(res, out, fmt) -> None:
    doc = res.doc
    ver = doc["verification"]
    if doc.get("target_default"):
        out.print(f"target: the default gates ({doc['target_text']}); set --min-cosine / --max-accuracy-drop to choose")
    out.print(("PASS: " if doc["pass"] else "FAIL: ") + doc["verdict"])
    for key in ("fp32", "before", "after"):
        c = ver[key]
        acc = f", accuracy {fmt(c['accuracy'], 4)}%" if c.get("accuracy") is not None else ""
        cos = "reference" if key == "fp32" else f"worst output cosine {fmt(c['min_cosine'], 6)}"
        out.print(f"  {c['label']}: {cos}{acc}")
    kept = doc["exclude_nodes"]
    out.print(
        f"ONNX nodes kept in float ({len(kept)}, of {len(doc['search']['kept'])} layers): {', '.join(kept) if kept else 'none'}"
    )
    ev = doc["evaluations"]
    ex = doc["execution"]
    where = f"Ray ({ex['ray']})" if ex["ray"] else f"{ex['workers'] or 1} worker(s)"
    out.print(
        f"{ev['spent']} evaluations ({ev['reused_from_earlier_runs']} reused from an earlier run), {doc['seconds']:.1f} s on {where}"
    )
    for name, cmd in doc.get("commands", {}).items():
        out.print(f"{name}: {cmd}")
    out.print(f"wrote {res.report}, {res.json}, {res.qdq}, {res.exclude_list}, {res.keep_fp16}")
