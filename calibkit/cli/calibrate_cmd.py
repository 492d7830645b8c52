"""``calibkit`` command line: calibrate, inspect, merge, methods (validate/compare/export-qdq
live in validate_cmds.py and register on this group)."""

from __future__ import annotations

from pathlib import Path

import click

from calibkit.cli.options import (
    DEMO_OUT,
    data_options,
    feed_from,
    feed_options,
    method_from,
    method_options,
    parse_size,
    preprocess_from,
    shard_tolerance_option,
    tensors_option,
    user_errors,
    warn_clip_option,
)


@click.command()
@click.argument("model", required=False, type=click.Path(dir_okay=False))
@data_options
@feed_options
@method_options
@warn_clip_option
@tensors_option
@click.option("--histograms", type=click.Path(dir_okay=False), help="Re-threshold stored histograms (no inference).")
@click.option(
    "-o",
    "--output",
    "output_dir",
    type=click.Path(file_okay=False),
    help="Output directory (default: current dir; the bare demo writes ./calibkit-demo).",
)
@click.option("--recollect", is_flag=True, help="Run inference even when matching stored histograms exist.")
@click.option("--force", is_flag=True, help="Accept --histograms whose model fingerprint differs.")
@click.option(
    "--trt-version", help="TensorRT version for the cache header (default: installed TensorRT, else 10.16.1)."
)
@click.option(
    "--cache-algorithm",
    default="EntropyCalibration2",
    show_default=True,
    help="Cache header algorithm; EntropyCalibration2 is what trtexec --calib accepts.",
)
@click.option(
    "--devices",
    metavar="0,1|all",
    help="GPUs to shard the data over, one process each; the result equals one GPU's at the same --batch-size.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=0,
    help="Processes decoding and preprocessing images (order kept: results never change).",
)
@click.option(
    "--ray",
    "ray_address",
    metavar="ADDRESS|auto",
    help=(
        "Run the --devices shards as Ray actors of one GPU each: auto uses RAY_ADDRESS or starts a local cluster; "
        "or a cluster's HOST:PORT. Needs pip install 'calibkit[ray]'."
    ),
)
@click.option(
    "--shards",
    type=int,
    metavar="K",
    help="Is the data enough? Deal it into K parts, keep each part's histograms, and report how much each amax moves across parts.",
)
@shard_tolerance_option
@click.option(
    "--gpu-memory",
    metavar="SIZE",
    help=(
        "GPU memory the CUDA run may use, e.g. 6GB or 6000MB (ONNX Runtime's arena is capped at it; the second "
        "buffer set that overlaps reduction with the next run is made only where it fits). Default: both "
        "buffer sets within max(2 GiB, 25%% of the first run's use). Never changes results."
    ),
)
@user_errors
def calibrate(
    model,
    shards,
    shard_tolerance,
    output_dir,
    histograms,
    recollect,
    force,
    trt_version,
    cache_algorithm,
    devices,
    workers,
    ray_address,
    warn_clip,
    gpu_memory,
    **kw,
) -> None:
    """Collect histograms of every activation and write INT8 scales.

    \b
    Writes to the output directory:
      <model>.cache          TensorRT calibration cache (trtexec --int8 --calib=)
      scales.json            per-tensor amax/scale, method, stats, fingerprints
      histograms.npz         stored histograms (re-threshold with --histograms)
      <model>.tensors.json   ONNX Runtime TensorsData (quantize_static calibration_cache_path)

    With no MODEL, calibrates the shipped demo (digits CNN) into ./calibkit-demo. With MODEL
    and no --data, reads ./calibration_data/<model stem>/ (or ./calibration_data/ when it holds
    one set), with the set's preprocess.json when no preprocessing option is given.
    """
    from calibkit import demo
    from calibkit.calibration import calibrate as run
    from calibkit.cli.progress import err, sample_progress
    from calibkit.cli.summary import print_calibration

    if histograms is not None:  # stored histograms: collection options would be silently ignored
        given = [
            o
            for o, v in (
                ("--data", kw.get("data")),
                ("--max-samples", kw.get("max_samples")),
                ("--recollect", recollect),
            )
            if v
        ]
        if given:
            from calibkit.errors import CalibkitError

            raise CalibkitError(
                f"--histograms re-thresholds stored histograms, so {' and '.join(given)} would be ignored; "
                "drop them, or drop --histograms to collect afresh"
            )
    if model is None:
        model = str(demo.MODEL)
        kw["data"] = kw["data"] or str(demo.CALIB)
        if not kw.get("preprocess_file"):
            kw["preprocess_file"] = str(demo.PREPROCESS)
        output_dir = output_dir or DEMO_OUT
        err.print(f"calibkit: no model given: calibrating the shipped demo {demo.MODEL.name} on {demo.CALIB}")
    elif kw["data"] is None and histograms is None:
        from calibkit.data import sets

        found = sets.find(model)
        kw["data"] = str(found.data)
        said = f"calibkit: no --data: using {found.why}"
        if found.preprocess is not None and all(
            kw.get(k) is None
            for k in ("preprocess_file", "size", "resize", "pixel_scale", "channels", "layout", "mean", "std")
        ):
            kw["preprocess_file"] = str(found.preprocess)
            said += f", with its {found.preprocess.name}"
        err.print(said)
    method, cfg = method_from(kw)
    pre = preprocess_from(kw)
    feed = feed_from(kw)
    data = kw.pop("data")
    if data is None and histograms is None:
        raise click.UsageError("give --data (or --histograms to re-threshold stored histograms)")
    if ray_address is not None:
        from calibkit.cli.options import check_ray

        check_ray()
    if shards is not None:
        _calibrate_shards(model, data, method, cfg, pre, feed, output_dir, histograms, devices, shards, kw, locals())
        return
    gpus = _devices(devices, ray_address)

    def on_source(source) -> None:
        from calibkit.collect.sharded import few_samples_warning

        samples = _total(source.num_samples(), feed.max_samples)
        set_total(samples)
        said = few_samples_warning(len(gpus or ()), samples)
        if said:
            err.print(f"calibkit: warning: {said}")

    with sample_progress("collecting") as (set_total, update):
        result = run(
            model,
            data=data,
            method=method,
            config=cfg,
            output_dir=output_dir or ".",
            histograms=histograms,
            batch_size=kw["batch_size"],
            preprocess=pre,
            recollect=recollect,
            force=force,
            trt_version=trt_version,
            cache_algorithm=cache_algorithm,
            device=kw["device"],
            progress=update,
            on_source=on_source,
            devices=gpus,
            workers=workers,
            ray=ray_address,
            warn_clip=warn_clip,
            feed=feed,
            tensors=kw["tensors"],
            gpu_memory=parse_size(gpu_memory, "--gpu-memory") if gpu_memory is not None else None,
        )
    print_calibration(result)
    if kw["tensors"] == "qdq":
        from calibkit.cli.progress import err

        err.print(
            "calibkit: note: --tensors qdq calibrates only the inputs the Q/DQ placement quantizes: the cache suits "
            "`export-qdq`, but a TensorRT 10 --int8 build from it runs the layers whose outputs have no scale in float; "
            "use the default --tensors trt for a TensorRT 10 cache"
        )


def _calibrate_shards(model, data, method, cfg, pre, feed, output_dir, histograms, devices, shards, kw, opts) -> None:
    """calibrate --shards K: the usual outputs, each part's histograms and the sufficiency verdict."""
    from calibkit.checks.sufficiency import calibrate_shards
    from calibkit.cli.progress import sample_progress
    from calibkit.cli.summary import print_calibration, print_sufficiency
    from calibkit.errors import CalibkitError

    for flag, given in (("--histograms", histograms), ("--devices", devices)):
        if given:
            raise CalibkitError(
                f"--shards collects the data in parts on this device; it cannot be combined with {flag}"
            )
    with sample_progress("collecting") as (set_total, update):
        result, report = calibrate_shards(
            model,
            data,
            shards,
            method=method,
            config=cfg,
            output_dir=output_dir or ".",
            tolerance=opts["shard_tolerance"],
            batch_size=kw["batch_size"],
            preprocess=pre,
            trt_version=opts["trt_version"],
            cache_algorithm=opts["cache_algorithm"],
            device=kw["device"],
            feed=feed,
            warn_clip=opts["warn_clip"],
            progress=update,
            on_source=lambda s: set_total(_total(s.num_samples(), feed.max_samples)),
            tensors=kw.get("tensors", "all"),
        )
    print_calibration(result)
    print_sufficiency(report)
    if not report.enough:
        raise SystemExit(3)


def _devices(text: str | None, ray: str | None = None) -> list[int] | None:
    from calibkit.collect.sharded import parse_devices
    from calibkit.sessions import cuda_device_count

    if text is None:
        return None
    # On a Ray cluster the GPUs are the cluster's: indices are checked there (multi_gpu._on_ray).
    return parse_devices(text, cuda_device_count(), check_visible=ray is None or text.strip() == "all")


def _total(known: int | None, limit: int | None) -> int | None:
    if limit is None:
        return known
    return limit if known is None else min(known, limit)


@click.command()
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--limit", type=click.IntRange(min=0), default=20, show_default=True, help="Rows to show.")
@user_errors
def inspect(path, limit) -> None:
    """Show a calibration cache, scales.json, histograms.npz, or a build's layers.json (what each ONNX node ran in)."""
    from calibkit.cli.summary import inspect_file

    inspect_file(Path(path), limit)


@click.command()
@click.argument("histograms", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Merged histograms.npz to write.")
@user_errors
def merge(histograms, output) -> None:
    """Merge histogram shards exactly (any order gives the same result)."""
    from calibkit.artifacts import histograms as store
    from calibkit.cli.progress import out

    merged = store.merge_files(list(histograms))
    store.save(merged, output)
    out.print(f"merged {len(histograms)} shard(s): {len(merged.tensors)} tensors, {merged.samples} samples -> {output}")


@click.command(name="methods")
def list_methods() -> None:
    """List threshold methods and their options."""
    import dataclasses

    from calibkit import methods

    for name in methods.names():
        m = methods.get(name)
        opts = ", ".join(f"{f.name}={f.default}" for f in dataclasses.fields(m.config_cls)) or "no options"
        click.echo(f"{name:11s} {m.summary} ({opts})")
