"""CLI: quantize."""

from __future__ import annotations

import click

from calibkit.cli.options import (
    compose,
    data_options,
    feed_from,
    feed_options,
    parallel_from,
    parallel_options,
    preprocess_from,
    shard_tolerance_option,
    user_errors,
)


def _smoothquant(ctx, param, value: str) -> str:
    if value in ("auto", "off"):
        return value
    try:
        alpha = float(value)
    except ValueError:
        alpha = float("nan")
    if not 0.0 <= alpha <= 1.0:
        raise click.BadParameter(f"{value!r}: give auto, off or an alpha in [0, 1] (e.g. 0.5)")
    return value


recovery_options = compose(
    click.option(
        "--thresholds",
        type=click.Choice(["consumer", "auto", "method"]),
        default="consumer",
        show_default=True,
        help="Activation thresholds: by the error of the layers reading them (consumer), the tensor's own "
        "MSE (auto), or calibrate's entropy (method).",
    ),
    click.option(
        "--bias-correction/--no-bias-correction",
        default=True,
        show_default=True,
        help="Correct each layer's bias for the mean shift INT8 causes (topological order).",
    ),
    click.option(
        "--rounding",
        type=click.Choice(["nearest", "adaptive"]),
        default="adaptive",
        show_default=True,
        help="INT8 weight rounding: to nearest, or adaptive (AdaRound on the layer's output error).",
    ),
    click.option(
        "--smoothquant",
        default="auto",
        show_default=True,
        metavar="auto|off|ALPHA",
        callback=_smoothquant,
        help="SmoothQuant for MatMul/Gemm inputs with outlier channels: alpha tuned per tensor (auto), off, or fixed.",
    ),
    click.option(
        "--equalize/--no-equalize",
        default=True,
        show_default=True,
        help="Cross-layer equalization of Conv -> ReLU-like -> Conv pairs.",
    ),
    click.option(
        "--fallback/--no-fallback",
        default=True,
        show_default=True,
        help="Keep in float the fewest layers recovery could not fix, when the target is still missed.",
    ),
    click.option(
        "--recovery-samples",
        type=click.IntRange(min=1),
        default=16,
        show_default=True,
        help="Calibration samples the layer-wise recovery reads (the histograms use all).",
    ),
    click.option("--ablate", is_flag=True, help="Also score bias correction alone, for the report (one more pass)."),
    click.option(
        "--iterations",
        type=click.IntRange(min=1),
        default=1000,
        show_default=True,
        help="Adaptive rounding iterations per layer (--rounding nearest for none).",
    ),
)


@click.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option(
    "--val", required=True, metavar="PATH", help="Search set (same forms as --data); disjoint from held-out data."
)
@click.option(
    "-o", "--output-dir", required=True, type=click.Path(file_okay=False), help="Directory for the output set."
)
@click.option(
    "--labels", type=click.Path(dir_okay=False), help="Labels .npy for --val (top-1 on the class-score output)."
)
@click.option("--metric", metavar="FILE.py:FN", help="Task metric: FN(outputs: dict, labels) -> one score per sample.")
@click.option("--min-cosine", type=float, help="Target: every output's cosine similarity to FP32 >= this.")
@click.option("--max-accuracy-drop", type=float, help="Target: task score drop vs FP32 <= this, percentage points.")
@click.option(
    "--precision",
    type=click.Choice(["int8", "fp8"]),
    default="int8",
    show_default=True,
    help="fp8: FP8 E4M3FN Q/DQ (scale amax/448); weight rounding and bias correction are skipped.",
)
@click.option(
    "--shards",
    type=int,
    metavar="K",
    help=(
        "Is the calibration data enough? Calibrate in K disjoint parts (merged exactly: the same histograms) and "
        "report how far each amax moves across parts (sufficiency.json); exit 3 when it moves more than "
        "--shard-tolerance."
    ),
)
@shard_tolerance_option
@recovery_options
@parallel_options
@data_options
@feed_options
@user_errors
def quantize(model, val, output_dir, data, **kw) -> None:
    """The best INT8 model calibkit can make: calibrate, recover, fall back, verify.

    Thresholds by the consumer's error, cross-layer equalization, SmoothQuant, bias correction
    and adaptive rounding keep layers in INT8; only what they cannot fix is kept in float.
    Every step is scored on --val. Writes MODEL.qdq.onnx (TensorRT 11 / ORT),
    MODEL.recovered.onnx + its cache (TensorRT 10), scales.json, keep-fp16.txt and report.html.
    Exit 3 when the target does not hold (the best result is still written).
    """
    from calibkit.cli.progress import err, out
    from calibkit.errors import ThresholdFailed
    from calibkit.quantize import QuantizeOptions
    from calibkit.quantize import quantize as run
    from calibkit.recovery import RecoveryOptions
    from calibkit.sensitivity import Target, check_target

    target = Target(kw.pop("min_cosine"), kw.pop("max_accuracy_drop"))
    check_target(target)
    if kw.pop("device") == "cuda":
        raise click.BadParameter("quantize evaluates on the CPU provider (exact INT8 emulation)", param_hint="--device")
    if kw.pop("batch_size") is not None:
        raise click.BadParameter(
            "quantize runs fixed batches of 16 samples (its sampled statistics depend on the batching, "
            "so results would change with it); drop --batch-size",
            param_hint="--batch-size",
        )
    recovery = RecoveryOptions(
        thresholds=kw.pop("thresholds"),
        bias_correction=kw.pop("bias_correction"),
        rounding=kw.pop("rounding"),
        iterations=kw.pop("iterations"),
    )
    options = QuantizeOptions(
        recovery=recovery,
        smoothquant=kw.pop("smoothquant"),
        equalize=kw.pop("equalize"),
        fallback=kw.pop("fallback"),
        recovery_samples=kw.pop("recovery_samples"),
        ablate=kw.pop("ablate"),
        precision=kw.pop("precision"),
        shards=kw.pop("shards"),
        shard_tolerance=kw.pop("shard_tolerance"),
    )
    par = parallel_from(kw)
    args = dict(
        labels=kw.pop("labels"),
        metric=kw.pop("metric"),
        target=target,
        options=options,
        preprocess=preprocess_from(kw),
        feed=feed_from(kw),
        **par,
        device="cpu",
        progress=lambda msg: err.print(msg),
    )
    try:
        res = run(model, data, val, output_dir, **args)
    except ThresholdFailed as exc:
        res = getattr(exc, "result", None)
        if res is None:
            raise
        _print(res, out)
        raise
    _print(res, out)


def _print(res, out) -> None:
    from calibkit.report.html import fmt

    doc = res.doc
    for s in doc["stages"]:
        task = f", task {fmt(s['task'], 4)}%" if s.get("task") is not None else ""
        kept = "" if s.get("kept", True) else " (not kept)"
        out.print(
            f"  {s['stage']}: worst output cosine {fmt(s['min_cosine'], 6)}{task}, {s['int8_layers']}/{s['layers']} {doc.get('precision', 'int8').upper()}{kept}"
        )
    out.print(doc["verdict"])
    out.print(
        f"wrote {res.outputs['qdq']}, {res.outputs['recovered']}, {res.outputs['report']} ({doc['seconds']:.1f} s)"
    )


for _p in quantize.params:  # shared data options that mean something else here
    if _p.name == "batch_size":
        _p.help = "Not accepted: quantize runs fixed batches of 16 (its sampled statistics depend on the batching)."
    elif _p.name == "device":
        _p.help = "Not accepted beyond cpu/auto: quantize evaluates on the CPU provider (exact INT8 emulation)."
