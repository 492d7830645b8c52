"""CLI: ``calibkit build`` (TensorRT engine from calibkit's cache / Q/DQ model)."""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from calibkit.cli.options import data_options, feed_from, feed_options, preprocess_from, user_errors


@click.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--engine", required=True, type=click.Path(dir_okay=False), help="Serialized engine (.plan) to write.")
@click.option(
    "--int8", is_flag=True, help="INT8 from --cache (calibkit's scales; any method) or --data (TensorRT 10 calibrates)."
)
@click.option(
    "--cache", type=click.Path(dir_okay=False), help="Calibration cache from `calibkit calibrate` (<model>.cache)."
)
@click.option(
    "--ranges",
    type=click.Path(dir_okay=False),
    help="TensorRT 10: calibkit's amaxes (scales.json or .cache) set as each tensor's dynamic range, no calibrator (11: the Q/DQ model from them).",
)
@click.option(
    "--qdq", type=click.Path(dir_okay=False), help="Q/DQ model from `calibkit export-qdq` (explicit quantization)."
)
@click.option("--fp16", is_flag=True, help="Allow FP16 (10.x: builder flag; 11.x: builds the FP16-converted model).")
@click.option(
    "--shapes",
    metavar="IN:MIN/OPT/MAX",
    help="Dynamic shapes, e.g. x:1x3x224x224/8x3x224x224/32x3x224x224 (comma-separated inputs). INT8 calibrates at OPT.",
)
@click.option(
    "--keep-fp16", metavar="LAYERS", help="Comma-separated layers (ONNX node names) kept out of INT8, in FP16."
)
@click.option(
    "--from-report",
    type=click.Path(dir_okay=False),
    help="Layers to keep in FP16 from a validate results.json (fp16_fallback.nodes) or a text file, one per line.",
)
@click.option(
    "--timing-cache",
    type=click.Path(dir_okay=False),
    help="Timing cache to reuse and update (default: <engine>.timing.cache).",
)
@click.option(
    "--calibrator",
    type=click.Choice(["entropy2", "entropy", "minmax", "legacy"]),
    default="entropy2",
    show_default=True,
    help="TensorRT 10 calibrator class.",
)
@click.option(
    "--write-cache", type=click.Path(dir_okay=False), help="Where the calibrator writes TensorRT's cache (with --data)."
)
@click.option("--workspace", "workspace_mb", type=click.IntRange(min=1), help="Builder workspace limit, MiB.")
@click.option(
    "--print-trtexec",
    is_flag=True,
    help="Print the equivalent trtexec command (no TensorRT needed) instead of building.",
)
@click.option(
    "--trt-major",
    type=click.Choice(["10", "11"]),
    help="TensorRT major version for --print-trtexec (default: the installed one, else what the inputs decide: --cache 10, --qdq strongly typed).",
)
@click.option(
    "--trt-version",
    help="TensorRT version of the trtexec that --print-trtexec is for (10.x): --calib then names a copy of the cache with that version's header.",
)
@data_options
@feed_options
@user_errors
def build(
    model,
    engine,
    int8,
    cache,
    ranges,
    qdq,
    fp16,
    shapes,
    keep_fp16,
    from_report,
    timing_cache,
    calibrator,
    write_cache,
    workspace_mb,
    print_trtexec,
    trt_major,
    trt_version,
    **kw,
) -> None:
    """Build a TensorRT engine with calibkit's INT8 scales (10.x and 11.x).

    \b
    TensorRT 10: INT8/FP16 builder flags; a calibrator hands TensorRT calibkit's cache
      (or calibrates from --data); layers in --keep-fp16 get FP16 precision constraints.
    TensorRT 11: strongly typed network from calibkit's Q/DQ model (made from --cache, or
      --qdq) and/or the FP16-converted model; kept layers get no Q/DQ.
    """
    from calibkit.cli.progress import err, out
    from calibkit.trt import installed_major
    from calibkit.trt.spec import BuildSpec, parse_shapes, read_layers

    if keep_fp16 and from_report:
        raise click.UsageError("give --keep-fp16 or --from-report, not both")
    layers = (
        [n.strip() for n in keep_fp16.split(",") if n.strip()]
        if keep_fp16
        else (read_layers(from_report) if from_report else [])
    )
    eng = Path(engine)
    spec = BuildSpec(
        Path(model),
        eng,
        int8=int8,
        cache=Path(cache) if cache else None,
        ranges=Path(ranges) if ranges else None,
        qdq=Path(qdq) if qdq else None,
        fp16=fp16,
        shapes=parse_shapes(shapes),
        keep_fp16=layers,
        timing_cache=Path(timing_cache) if timing_cache else eng.with_suffix(".timing.cache"),
        data=kw.pop("data"),
        preprocess=preprocess_from(kw),
        calibrator=calibrator,
        batch_size=kw.get("batch_size") or 8,
        write_cache=Path(write_cache) if write_cache else None,
        workspace_mb=workspace_mb,
        **vars(feed_from(kw)),
    )
    if trt_version and not print_trtexec:
        raise click.UsageError(
            "--trt-version is for --print-trtexec (a build re-headers the cache for the installed TensorRT)"
        )
    if print_trtexec:
        from calibkit.trt.build import trtexec_line, trtexec_major
        from calibkit.trt.prepare import notes

        major, why = trtexec_major(spec, int(trt_major) if trt_major else None, installed_major())
        if trt_version:
            from calibkit.artifacts.trt_cache import encode_version

            encode_version(trt_version)  # a one-line error for anything not like 10.16.1
            given = int(str(trt_version).split(".")[0])
            if given not in (10, 11):
                raise click.BadParameter(
                    f"{trt_version}: calibkit writes for TensorRT 10.x or 11.x", param_hint="--trt-version"
                )
            if given != major:
                raise click.BadParameter(
                    f"{trt_version} is TensorRT {given}, but this command is for TensorRT {major} ({why or '--trt-major'}); "
                    "give a version of that major, or --trt-major to match",
                    param_hint="--trt-version",
                )
        said: list[str] = [f"trtexec for TensorRT {major}: {why}"] if why else []
        line = trtexec_line(spec, major, trt_version, said)
        if major < 11 and spec.keep_fp16:
            said.append(
                "trtexec matches --layerPrecisions by layer name (calibkit's build by [ONNX Layer:] metadata): a node TensorRT split into several layers is only partly kept; the layer report shows it"
            )
        said.append(f"after the build, `calibkit inspect {shlex.quote(str(spec.layer_info))}` shows what each ONNX node ran in")
        for note in said + notes(spec, major):
            err.print(f"note: {note}")
        click.echo(line)
        return
    from calibkit.trt.build import build as run

    res = run(spec)
    out.print(
        f"built {res['engine']} with TensorRT {res['trt']}"
        + (f" ({res['kept_fp16']} layers kept in FP16)" if res["kept_fp16"] else "")
    )
    for note in res.get("notes", []):
        err.print(f"note: {note}")
    if res.get("layer_report"):
        out.print(f"layer report {res['layer_report']}: {res['layer_summary']}")
    if res.get("ranges"):
        err.print(f"dynamic ranges set on {res['ranges']} tensors")
    if res.get("calibration_batches"):
        err.print(f"TensorRT calibrated on {res['calibration_batches']} batches")
