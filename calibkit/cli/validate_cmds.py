"""CLI: validate, compare, export-qdq."""

from __future__ import annotations

from pathlib import Path

import click

from calibkit.cli.options import (
    DEMO_OUT,
    compose,
    data_options,
    feed_from,
    feed_options,
    preprocess_from,
    user_errors,
    warn_clip_option,
)
from calibkit.errors import CalibkitError

DEFAULT_METHODS = "entropy,percentile:99.99,percentile:99.999,minmax,mse"

precision_option = click.option(
    "--precision",
    type=click.Choice(["int8", "fp8"]),
    default="int8",
    show_default=True,
    help="int8: symmetric INT8 (scale amax/127); fp8: FP8 E4M3FN (scale amax/448, opset 19), Hopper/Ada/Blackwell.",
)

gate_options = compose(
    click.option(
        "--labels",
        type=click.Path(dir_okay=False),
        help="Labels .npy, one per validation sample (top-1 accuracy on the class-score output).",
    ),
    click.option(
        "--metric",
        metavar="FILE.py:FN",
        help="Task metric: FN(outputs: dict, labels) -> one score per sample; reported as its mean.",
    ),
    click.option("--report", type=click.Path(dir_okay=False), help="HTML report to write (self-contained)."),
    click.option(
        "--results", type=click.Path(dir_okay=False), help="results.json to write (default: beside the report)."
    ),
    click.option("--min-cosine", type=float, help="Gate: every output's cosine similarity >= this."),
    click.option("--min-sqnr", type=float, help="Gate: every output's SQNR (dB) >= this."),
    click.option("--max-accuracy-drop", type=float, help="Gate: task accuracy drop vs FP32, percentage points."),
    click.option(
        "--fallback-sqnr",
        type=float,
        default=30.0,
        show_default=True,
        help="Layers under this local SQNR (dB) are advised to stay FP16.",
    ),
    click.option("--exclude-nodes", metavar="REGEX", help="Keep matching nodes in float in the INT8 candidates."),
    click.option("--force", is_flag=True, help="Accept scales/histograms whose model fingerprint differs."),
    click.option(
        "--allow-preprocess-mismatch",
        is_flag=True,
        help="Validate images preprocessed unlike the calibration data (default: the calibration's preprocessing; a difference is an error).",
    ),
)


def _gates(kw):
    import math

    from calibkit.validate import Gates

    for key, lo, hi in (
        ("min_cosine", -1.0, 1.0),
        ("min_sqnr", -math.inf, math.inf),
        ("max_accuracy_drop", 0.0, 100.0),
        ("fallback_sqnr", -math.inf, math.inf),
    ):
        v = kw.get(key)
        if v is not None and not (math.isfinite(v) and lo <= v <= hi):
            raise click.BadParameter(
                f"{v} is not a finite number" + (f" in [{lo:g}, {hi:g}]" if math.isfinite(lo) else ""),
                param_hint="--" + key.replace("_", "-"),
            )

    return Gates(kw.pop("min_cosine"), kw.pop("max_accuracy_drop"), kw.pop("min_sqnr"), kw.pop("fallback_sqnr"))


def _print(res) -> None:
    from calibkit.cli.progress import out, table
    from calibkit.report.html import fmt
    from calibkit.validate.metrics import with_noise

    doc = res.doc
    rows, notes = [], []
    for i, c in enumerate(doc["candidates"]):
        outs = list(c["outputs"].values())
        worst = min((o["sqnr_db"] for o in outs if not isinstance(o["sqnr_db"], str)), default=None)
        cos = min((o["cosine"] for o in outs if not isinstance(o["cosine"], str)), default=None)
        if any(isinstance(o["sqnr_db"], str) and o["sqnr_db"] != "inf" for o in outs):
            worst = "nan"
        verdict = "ref" if i == 0 else ("PASS" if c["pass"] else "FAIL")
        worst = fmt(worst, 3) if not isinstance(worst, float) else f"{worst:.1f}"
        lat = c["latency"]
        rows.append(
            [
                c.get("rank") or "-",
                c["label"],
                verdict,
                fmt(c["accuracy"], 4),
                fmt(c["accuracy_drop_pp"], 2),
                worst,
                fmt(cos, 4),
                with_noise(lat["median_ms"], lat.get("median_noise_ms")),
            ]
        )
        notes.append(f"  {c['label']}: {c['note']}")
    out.print(
        table(
            "candidates (best first; '=' marks ties within the run's noise)",
            ["#", "candidate", "ok", "acc %", "drop", "SQNR", "cosine", "ms/batch"],
            rows,
            keep=8,
        )
    )
    out.print("acc %: task accuracy; drop: FP32 minus candidate, points; SQNR (dB) and cosine: worst output")
    out.print("how each ran:\n" + "\n".join(notes))
    gates = ", ".join(f"{k} {v}" for k, v in doc["gates"].items())
    out.print(
        f"gates: {gates}"
        + (" (defaults: no gate given)" if doc.get("gates_default") else "")
        + "; NaN/Inf outputs always fail"
    )
    for c in doc["candidates"][1:]:
        for f in c["failures"]:
            out.print(f"FAIL {c['label']}: {f}")
    for w in doc.get("warnings", []):
        out.print(f"check your data: {w}")
    for label, cw in (doc.get("clip_warnings") or {}).items():
        if cw["count"]:
            n, limit = cw["count"], cw["limit"]
            out.print(
                f"WARNING: {label} clips more than {limit:.4%} of the values of {n} tensor(s) (--warn-clip; all in the results JSON and report); worst: {cw['tensors'][0]['message']}"
            )
    for u in doc.get("unavailable", []):
        out.print(f"unavailable: {u['backend']}: {u['reason']}")
    for c in doc["candidates"]:
        cmd = (c.get("fp16_fallback") or {}).get("command")
        if cmd and not c.get("pass"):  # a passing candidate needs no fallback (the report still lists it)
            out.print(f"to keep {c['label']}'s weakest layers in FP16:\n  {cmd}")
    if doc.get("method_outputs"):
        out.print(
            f"wrote each method's scales/cache under {Path(next(iter(doc['method_outputs'].values()))).parent}/<method>/"
        )
    out.print(f"wrote report  {res.report} ({res.report_seconds:.2f} s to render)")
    out.print(f"wrote results {res.results}")


def _run_reporting(fn, **kwargs):
    from calibkit.cli.progress import sample_progress
    from calibkit.errors import ThresholdFailed

    cap = kwargs.get("max_samples")

    def total(source):
        n = source.num_samples()
        return min(n, cap) if n is not None and cap else (n or cap)

    with sample_progress("validating") as (set_total, update):
        try:
            res = fn(progress=update, on_source=lambda s: set_total(total(s)), **kwargs)
        except ThresholdFailed as exc:
            _print(exc.result)
            raise
    _print(res)


@click.command()
@click.argument("model", required=False, type=click.Path(dir_okay=False))
@click.option("--scales", type=click.Path(dir_okay=False), help="scales.json from `calibkit calibrate`.")
@click.option(
    "--backends",
    help="Comma-separated: ort-int8, ort-int8-cpu, ort-fp8, ort-fp16, ort-fp32, trt-int8, trt-fp16 "
    "[default: ort-int8,ort-fp16; the bare demo: ort-int8,ort-fp16,trt-int8].",
)
@click.option(
    "--emulate-fp16",
    is_flag=True,
    help="Use the float16-rounding emulation for ort-fp16 even where ORT can run the FP16 graph.",
)
@click.option(
    "--reference",
    type=click.Path(dir_okay=False),
    help=(
        "Judge the candidates against this FP32 model's outputs instead of MODEL's: the original of a model "
        "`calibkit quantize` recovered (validate OUT/<stem>.recovered.onnx --scales OUT/scales.json "
        "--reference ORIGINAL.onnx). Same inputs and outputs required."
    ),
)
@gate_options
@data_options
@feed_options
@user_errors
def validate(model, scales, backends, emulate_fp16, reference, **kw) -> None:
    """Run INT8/FP16 candidates against the ONNX Runtime FP32 reference; write an HTML report.

    Exits 0 when every candidate passes the gates, 3 when one fails (the report is written
    either way), 1 on a user error. With no MODEL: the shipped demo, end to end (calibrates
    it if needed), report in ./calibkit-demo/report.html.
    """
    from calibkit import demo
    from calibkit.validate import validate as run

    if model is None:
        scales, kw = _demo_defaults(kw)
        model = str(demo.MODEL)
        kw["report"] = kw["report"] or f"{DEMO_OUT}/report.html"
        # ort-int8-cpu (ORT's real INT8 kernels) is left out: on x86 CPUs without VNNI its u8s8
        # products saturate (ONNX Runtime's quantization docs), which says nothing of TensorRT.
        backends = backends or "ort-int8,ort-fp16,trt-int8"
    if backends is not None and not [b for b in backends.split(",") if b.strip()]:
        raise CalibkitError("--backends is empty; name at least one, e.g. --backends ort-int8,ort-fp16")
    backends = backends or "ort-int8,ort-fp16"
    if {b.strip() for b in backends.split(",") if b.strip()} == {"ort-fp32"} and reference is None:
        raise CalibkitError(
            "--backends ort-fp32 alone compares the FP32 model with itself (a PASS that says nothing); "
            "name a candidate, e.g. --backends ort-int8, or judge it against another model with --reference"
        )
    if not kw["data"]:
        raise click.UsageError("give --data with the validation set")
    if not kw["report"]:
        kw["report"] = str(Path("reports") / f"{Path(model).stem}.html")
    gates = _gates(kw)
    pre = preprocess_from(kw)
    feed = feed_from(kw)
    _run_reporting(
        run,
        model=model,
        scales=scales,
        data=kw["data"],
        labels=kw["labels"],
        metric=kw["metric"],
        backends=[b.strip() for b in backends.split(",") if b.strip()],
        report=kw["report"],
        results=kw["results"],
        gates=gates,
        preprocess=pre,
        batch_size=kw["batch_size"],
        device=kw["device"],
        exclude_nodes=kw["exclude_nodes"],
        emulate_fp16=emulate_fp16,
        force=kw["force"],
        allow_preprocess_mismatch=kw["allow_preprocess_mismatch"],
        feed=feed,
        reference=reference,
    )


def _demo_scales():
    """The demo's scales.json in ./calibkit-demo when it is a readable calibration of the shipped
    demo model (a user's `calibkit calibrate --method ...` there is theirs: validate it, do not
    recalibrate over it); None otherwise."""
    from calibkit import demo
    from calibkit.artifacts import scales as scales_io
    from calibkit.errors import CalibkitError
    from calibkit.graph.model import fingerprint_file

    path = Path(DEMO_OUT) / "scales.json"
    if not path.is_file():
        return None
    try:
        table = scales_io.read(path)
    except CalibkitError:
        return None
    return path if table.meta.get("model", {}).get("fingerprint") == fingerprint_file(demo.MODEL) else None


def _demo_defaults(kw):
    from calibkit import demo
    from calibkit.calibration import calibrate
    from calibkit.cli.progress import err
    from calibkit.data import Preprocess

    existing = _demo_scales()
    if existing is not None:
        from calibkit.artifacts import scales as scales_io

        err.print(
            f"calibkit: no model given: the shipped demo {demo.MODEL.name}, with its calibration already in {existing} "
            f"(method {scales_io.read(existing).method}; delete it to recalibrate), validated on {demo.VAL}"
        )
        kw["data"] = kw["data"] or str(demo.VAL)
        kw["labels"] = kw["labels"] or str(demo.VAL / "labels.npy")
        return str(existing), kw
    err.print(
        f"calibkit: no model given: the shipped demo {demo.MODEL.name}, calibrated on {demo.CALIB}, validated on {demo.VAL}"
    )
    calibrate(demo.MODEL, demo.CALIB, preprocess=Preprocess.from_file(demo.PREPROCESS), output_dir=DEMO_OUT)
    kw["data"] = kw["data"] or str(demo.VAL)
    kw["labels"] = kw["labels"] or str(demo.VAL / "labels.npy")
    return f"{DEMO_OUT}/scales.json", kw


@click.command()
@click.argument("model", required=False, type=click.Path(dir_okay=False))
@click.option("--histograms", type=click.Path(dir_okay=False), help="histograms.npz from `calibkit calibrate`.")
@click.option(
    "--methods", "method_list", default=DEFAULT_METHODS, show_default=True, help="Comma-separated method specs."
)
@click.option(
    "--backend",
    default="ort-int8",
    show_default=True,
    type=click.Choice(["ort-int8", "ort-int8-cpu"]),
    help="How each method's INT8 model runs.",
)
@click.option(
    "-o",
    "--output",
    "output_dir",
    type=click.Path(file_okay=False),
    help="Write each method's scales.json, cache and TensorsData to DIR/<method>/ (default: <report>.methods/).",
)
@click.option(
    "--export-qdq",
    "export_qdq",
    is_flag=True,
    help="Also write each method's Q/DQ model (as validated) to DIR/<method>/.",
)
@click.option(
    "--trt-version", help="TensorRT version for the caches' header (default: installed TensorRT, else 10.16.1)."
)
@click.option(
    "--precision",
    "precision_list",
    default="int8",
    show_default=True,
    help="Comma-separated precisions to run each method in, side by side: int8, fp8 (FP8 E4M3FN, ort-fp8).",
)
@click.option(
    "--placement",
    "placement_list",
    default="trt",
    show_default=True,
    help="Comma-separated Q/DQ placements to run each method with, side by side: trt (= trt-min), trt-fused.",
)
@warn_clip_option
@gate_options
@data_options
@feed_options
@user_errors
def compare(
    model,
    histograms,
    method_list,
    backend,
    output_dir,
    export_qdq,
    trt_version,
    precision_list,
    placement_list,
    warn_clip,
    **kw,
) -> None:
    """Score several threshold methods from one stored histogram set in one validation pass.

    The report ranks methods by task accuracy, then output SQNR. With no MODEL: the demo.
    Exits 0 when at least one method passes the gates (the choice the comparison is for), 3 when
    none does, 1 on a user error.
    """
    from calibkit import demo
    from calibkit.validate import compare as run

    if model is None:
        _, kw = _demo_defaults(kw)
        model = str(demo.MODEL)
        histograms = f"{DEMO_OUT}/histograms.npz"
        kw["report"] = kw["report"] or f"{DEMO_OUT}/compare.html"
        if (
            method_list == DEFAULT_METHODS
        ):  # the digits CNN is robust; 99.9 shows clipping cost, auto the per-tensor pick
            method_list = "entropy,percentile:99.99,percentile:99.9,minmax,mse,auto"
    if not histograms:
        raise click.UsageError("give --histograms (from calibkit calibrate)")
    if not kw["data"]:
        raise click.UsageError("give --data with the validation set")
    kw["report"] = kw["report"] or str(Path("reports") / f"{Path(model).stem}.compare.html")
    gates = _gates(kw)
    pre = preprocess_from(kw)
    methods_ = [m.strip() for m in method_list.split(",") if m.strip()]
    feed = feed_from(kw)
    _run_reporting(
        run,
        model=model,
        histograms=histograms,
        data=kw["data"],
        method_specs=methods_,
        labels=kw["labels"],
        metric=kw["metric"],
        backend=backend,
        report=kw["report"],
        results=kw["results"],
        gates=gates,
        preprocess=pre,
        batch_size=kw["batch_size"],
        device=kw["device"],
        exclude_nodes=kw["exclude_nodes"],
        force=kw["force"],
        allow_preprocess_mismatch=kw["allow_preprocess_mismatch"],
        output_dir=output_dir,
        export_qdq=export_qdq,
        trt_version=trt_version,
        warn_clip=warn_clip,
        feed=feed,
        precisions=tuple(p.strip() for p in precision_list.split(",") if p.strip()),
        placements=tuple(p.strip() for p in placement_list.split(",") if p.strip()),
    )


@click.command(name="export-qdq")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--scales", required=True, type=click.Path(dir_okay=False), help="scales.json from `calibkit calibrate`.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Q/DQ model to write.")
@click.option(
    "--placement",
    type=click.Choice(["trt", "trt-min", "trt-fused", "ort"]),
    default="trt",
    show_default=True,
    help="trt (= trt-min): inputs of Conv/Gemm/MatMul + residual skip (TensorRT 11); trt-fused: TensorRT's "
    "fusion rules too (pooling, shared Concat scales, no constants, small-channel/GEMV exclusions; "
    "`calibkit placement` lists them); ort: outputs too (real INT8 on ORT CPU).",
)
@click.option("--exclude-nodes", metavar="REGEX", help="Nodes (name or first output) to keep in float.")
@click.option(
    "--exclude-list",
    type=click.Path(dir_okay=False),
    help="File of node names to keep in float, one per line (`calibkit fallback` writes exclude-nodes.txt).",
)
@click.option("--exclude-op-types", metavar="OPS", help="Comma-separated op types to keep in float, e.g. Gemm.")
@precision_option
@click.option(
    "--rounding",
    type=click.Choice(["nearest", "adaptive"]),
    default="nearest",
    show_default=True,
    help="INT8 weight rounding: to nearest, or adaptive (AdaRound on each layer's output error; needs --data).",
)
@click.option(
    "--bias-correction/--no-bias-correction",
    default=False,
    show_default=True,
    help="Correct each layer's bias for the mean shift INT8 causes (topological order; needs --data).",
)
@click.option("--data", metavar="PATH", help="Calibration data the weight recovery reads (same forms as calibrate).")
@click.option(
    "--recovery-samples", type=click.IntRange(min=1), default=16, show_default=True, help="Samples recovery reads."
)
@click.option("--force", is_flag=True, help="Accept scales whose model fingerprint differs.")
@user_errors
def export_qdq(
    model,
    scales,
    output,
    placement,
    exclude_nodes,
    exclude_list,
    exclude_op_types,
    precision,
    rounding,
    bias_correction,
    data,
    recovery_samples,
    force,
) -> None:
    """Write a Q/DQ (explicitly quantized) ONNX model from calibkit scales.

    Constant-node weights and opsets below 13 are normalised in a copy; float16 graphs get
    float16 scales; models with external data (or large ones) are written with
    ``OUTPUT.data`` beside the output. The result must pass onnx.checker and load in ONNX
    Runtime, or nothing is written.
    """
    import time

    import onnx

    from calibkit.artifacts import scales as scales_io
    from calibkit.cli.progress import out
    from calibkit.graph.model import check_fingerprint, fingerprint_file
    from calibkit.qdq.bodies import body_activation_count
    from calibkit.qdq.export import activation_qdq
    from calibkit.qdq.export import export_qdq as run
    from calibkit.qdq.files import read_light

    start = time.perf_counter()
    light = read_light(model)  # one-line errors for a missing or unreadable model
    if exclude_list:
        if exclude_nodes:
            raise click.UsageError("give --exclude-nodes or --exclude-list, not both")
        from calibkit.sensitivity.exclusions import read_list

        exclude_nodes = read_list(exclude_list, light)
    table = scales_io.read(scales)
    check_fingerprint(
        table.meta.get("model", {}).get("fingerprint"), fingerprint_file(model), f"scales {scales}", force
    )
    ops = [o.strip() for o in exclude_op_types.split(",")] if exclude_op_types else None
    notes: list[str] = []
    source = model
    recover = rounding == "adaptive" or bias_correction
    if recover and not data:
        raise click.UsageError("--rounding adaptive and --bias-correction fit the weights to data: pass --data CALIB")
    if data and not recover:
        raise click.UsageError("--data is read only by --rounding adaptive or --bias-correction; drop it or add one")
    if recover and precision != "int8":
        raise click.UsageError(f"--rounding/--bias-correction fit INT8 weights; with --precision {precision} drop them")
    if recover:
        from calibkit.quantize.weights import recovered, summary
        from calibkit.recovery import RecoveryOptions

        opts = RecoveryOptions(thresholds="method", bias_correction=bias_correction, rounding=rounding)
        source, doc = recovered(model, table.amax(), table.meta, data, opts, recovery_samples)
        if not doc.get("layers"):
            from calibkit.errors import CalibkitError

            reasons = (
                "; ".join(sorted(set(doc.get("skipped", {}).values())))
                or "no Conv/ConvTranspose/Gemm/MatMul with a constant weight"
            )
            raise CalibkitError(
                f"--rounding/--bias-correction: no layer of {model} can be recovered ({reasons}); nothing written"
            )
        notes.append(
            summary(doc)
            + "; a TensorRT 10 cache build needs these weights too: `calibkit quantize` writes the recovered float model"
        )
    path = run(
        source,
        table.amax(),
        output,
        placement=placement,
        exclude_nodes=exclude_nodes,
        exclude_op_types=ops,
        notes=notes,
        precision=precision,
    )
    written = onnx.load(str(path), format="protobuf", load_external_data=False)
    q = len(activation_qdq(written)) + body_activation_count(written)
    from calibkit.qdq.files import external_locations

    for note in notes:
        out.print(f"note: {note}")
    extra = "".join(f" + {loc}" for loc in external_locations(written))
    if q == 0:
        out.print(
            f"wrote {path}{extra}: nothing is quantized: no activation got a Q/DQ pair ({placement} placement), so "
            f"every layer runs in float; check --exclude-nodes/--exclude-op-types and `calibkit placement {model}`"
        )
        return
    out.print(
        f"wrote {path}{extra}: {q} quantized activations ({placement} placement, method {table.method}), weights per-channel {precision.upper()}, {time.perf_counter() - start:.1f} s"
    )
    if precision == "fp8":
        out.print(
            f"build: trtexec --onnx={path} --stronglyTyped  (TensorRT 10/11; FP8 needs SM 8.9+: Ada, Hopper, Blackwell)"
        )
