"""Option groups shared by subcommands (model, data, preprocessing, method, output)."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import click

from calibkit import methods
from calibkit.cli.signals import interrupt_behind, interrupted
from calibkit.data.images import CHANNELS, LAYOUTS, Preprocess
from calibkit.errors import CalibkitError

DEMO_OUT = "calibkit-demo"  # where the bare demo commands write


def compose(*decorators: Callable) -> Callable:
    def apply(fn: Callable) -> Callable:
        for d in reversed(decorators):
            fn = d(fn)
        return fn

    return apply


def _floats(text: str | None, option: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise CalibkitError(f"{option} {text!r}: expected comma-separated numbers") from None


data_options = compose(
    click.option(
        "--data",
        "data",
        metavar="PATH",
        help="Folder of images, .npz keyed by input name, .npy, or loader script FILE.py[:load_data].",
    ),
    click.option(
        "--batch-size",
        type=click.IntRange(min=1),
        default=None,
        help="Samples per ORT run (default: fits a 64 MB activation budget). Never changes results.",
    ),
    click.option(
        "--preprocess",
        "preprocess_file",
        type=click.Path(dir_okay=False),
        help="JSON file with image preprocessing (size, resize, scale, mean, std, channels, layout).",
    ),
    click.option("--size", metavar="H,W", help="Image crop size (default: the model's input H,W)."),
    click.option("--resize", type=int, help="Resize the shorter image side to this before centre-cropping."),
    click.option("--scale", "pixel_scale", type=float, help="Multiply pixels by this (default 1/255)."),
    click.option("--mean", help="Per-channel mean, comma-separated (after scaling)."),
    click.option("--std", help="Per-channel std, comma-separated."),
    click.option("--channels", type=click.Choice(CHANNELS), help="Channel order for images (default RGB)."),
    click.option("--layout", type=click.Choice(LAYOUTS), help="Tensor layout for images (default NCHW)."),
    click.option(
        "--device",
        type=click.Choice(["auto", "cpu", "cuda"]),
        default="auto",
        show_default=True,
        help="ONNX Runtime provider; auto uses CUDA only when a GPU is really usable.",
    ),
)


# How the data is cut into runs (calibrate; validate/compare/build can add them the same way).
feed_options = compose(
    click.option(
        "--batch-axis",
        "batch_axis",
        multiple=True,
        metavar="INPUT:AXIS",
        help=(
            "Sample axis of an input (repeatable or comma list), e.g. state:1; INPUT:none passes it whole "
            "to every run (scalars, shared state). Default: from the model's dims."
        ),
    ),
    click.option(
        "--no-rebatch",
        "no_rebatch",
        is_flag=True,
        help="Run each feed the data yields exactly as given (complete feeds from a loader script) instead of re-cutting batches.",
    ),
    click.option(
        "--max-samples",
        type=click.IntRange(min=1),
        default=None,
        help="Stop after this many samples (an endless loader, a huge folder).",
    ),
)


def feed_from(kw: dict):
    """--batch-axis/--no-rebatch/--max-samples -> the FeedOptions every command passes on."""
    from calibkit.data.options import FeedOptions
    from calibkit.graph.batch_axes import parse_batch_axes

    return FeedOptions(
        parse_batch_axes(kw.pop("batch_axis", ()) or ()), not kw.pop("no_rebatch", False), kw.pop("max_samples", None)
    )


def preprocess_from(kw: dict) -> Preprocess:
    """Build the Preprocess from --preprocess FILE, then override with explicit flags.

    None when neither is given: validation then uses the calibration's preprocessing."""
    keys = ("preprocess_file", "size", "resize", "pixel_scale", "channels", "layout", "mean", "std")
    if all(kw.get(k) is None for k in keys):
        for k in keys:
            kw.pop(k, None)
        return None
    base = Preprocess.from_file(kw.pop("preprocess_file")) if kw.get("preprocess_file") else Preprocess()
    kw.pop("preprocess_file", None)
    d = base.to_dict()
    size = kw.pop("size", None)
    if size:
        try:
            vals = [int(v) for v in size.split(",")]
        except ValueError:
            vals = []
        if len(vals) != 2:
            raise CalibkitError(f"--size {size!r}: expected two whole numbers H,W (e.g. 224,224)")
        if not all(1 <= v <= 16384 for v in vals):
            raise CalibkitError(f"--size {size!r}: each side must be 1 to 16384 pixels")
        d["size"] = vals
    for key, opt in (("resize", "resize"), ("pixel_scale", "scale"), ("channels", "channels"), ("layout", "layout")):
        v = kw.pop(key, None)
        if v is not None:
            d[opt] = v
    for key in ("mean", "std"):
        v = _floats(kw.pop(key, None), f"--{key}")
        if v is not None:
            d[key] = list(v)
    return Preprocess.from_dict(d)


method_options = compose(
    click.option(
        "--method",
        default="entropy",
        show_default=True,
        metavar="NAME[:ARG]",
        help=f"Threshold method: {', '.join(methods.names())} (e.g. percentile:99.9).",
    ),
    click.option("--percentile", type=float, help="Percentile for --method percentile (default 99.99)."),
    click.option("--levels", type=int, help="Quantisation levels for --method entropy (default 128)."),
    click.option("--start-bin", type=int, help="First candidate bin for entropy / mse (default 128)."),
)


def warn_clip_option(fn: Callable) -> Callable:
    from calibkit.numerics.clipping import DEFAULT_WARN_CLIP

    return click.option(
        "--warn-clip",
        "warn_clip",
        type=float,
        default=DEFAULT_WARN_CLIP,
        show_default=True,
        metavar="FRACTION",
        help="Warn, per tensor, when a threshold clips more than this fraction of the tensor's values (1: never).",
    )(fn)


def tensors_option(fn: Callable) -> Callable:
    return click.option(
        "--tensors",
        "tensors",
        type=click.Choice(("trt", "qdq", "all")),
        default="trt",
        show_default=True,
        help=(
            "Which tensors get histograms: trt = all but those inside TensorRT's fused layers (every scale a "
            "TensorRT 10 build reads); qdq = only the inputs the Q/DQ placement quantizes; all = every float tensor. "
            "Left-out tensors are listed in scales.json with the reason."
        ),
    )(fn)


SIZE_UNITS = {"": 1, "B": 1, "K": 10**3, "KB": 10**3, "M": 10**6, "MB": 10**6, "G": 10**9, "GB": 10**9}
SIZE_UNITS.update({"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "T": 10**12, "TB": 10**12, "TIB": 2**40})


def parse_size(text: str, option: str) -> int:
    """``6GB``, ``6000MB``, ``5.5GiB`` or a byte count -> bytes (a CalibkitError names ``option``)."""
    import re

    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    unit = m.group(2).upper() if m else None
    if m is None or unit not in SIZE_UNITS or float(m.group(1)) * SIZE_UNITS[unit] < 1:
        raise CalibkitError(f"{option} {text!r}: give a size such as 6GB, 6000MB or 5.5GiB")
    return int(float(m.group(1)) * SIZE_UNITS[unit])


# calibrate --shards and quantize --shards: one verdict threshold, one help text
shard_tolerance_option = click.option(
    "--shard-tolerance",
    type=float,
    default=0.05,
    show_default=True,
    metavar="F",
    help="--shards verdict: every amax within this fraction of the whole set's across parts is 'stable'.",
)


def method_from(kw: dict):
    spec = kw.pop("method")
    name, cfg = methods.parse_spec(spec)
    overrides = {
        "percentile": kw.pop("percentile", None),
        "levels": kw.pop("levels", None),
        "start_bin": kw.pop("start_bin", None),
    }
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if ":" in spec:  # a parameter given twice, in the spec and as its own option, with two values
        from calibkit.errors import CalibkitError

        given = vars(cfg)  # what the spec set (the rest at defaults)
        spec_params = {k for k in given if f"{k}=" in spec or (k == "percentile" and name == "percentile")}
        for k in sorted(set(overrides) & spec_params):
            if float(overrides[k]) != float(given[k]):
                raise CalibkitError(
                    f"--method {spec} sets {k} {given[k]:g} and --{k.replace('_', '-')} {overrides[k]:g}: give it once"
                )
    if overrides:
        import dataclasses

        params = {**dataclasses.asdict(cfg), **overrides}
        cfg = methods.make_config(name, **params)
    return name, cfg


# Where independent evaluations run (sensitivity, fallback search): see calibkit.executor.
parallel_options = compose(
    click.option(
        "--workers",
        metavar="N",
        default=None,
        help=(
            "Run evaluations in N worker processes (N Ray actors with --ray). Default 1 (this process); "
            "with --ray every CPU of the cluster. Never changes results."
        ),
    ),
    click.option(
        "--ray",
        "ray_address",
        metavar="ADDRESS|auto",
        help=(
            "Run evaluations on Ray: auto uses RAY_ADDRESS or starts a local cluster for the run; "
            "or a cluster's HOST:PORT. Needs pip install 'calibkit[ray]'."
        ),
    ),
)


def parallel_from(kw: dict) -> dict:
    """--workers/--ray -> executor.make() keyword arguments (a bad --workers is a CalibkitError)."""
    from calibkit.executor import check_workers

    workers = kw.pop("workers", None)
    ray = kw.pop("ray_address", None)
    if ray is not None:
        check_ray()
    return {"workers": None if workers is None else check_workers(workers), "ray": ray}


def check_ray() -> None:
    """--ray without Ray installed is refused before any work: the run would otherwise fail
    only where it first needs an evaluation, or claim Ray ran when every one was reused."""
    import importlib.util

    from calibkit.executor.ray_exec import NEEDS_RAY

    try:
        found = importlib.util.find_spec("ray") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise CalibkitError(NEEDS_RAY)


OUTPUT_OPTIONS = frozenset({"output", "output_dir", "report", "results", "json_path"})  # what a run writes


def _early_output_checks(kwargs: dict) -> None:
    """Outputs refused at publish time for their path alone (inside a .calibkit folder, or a file
    that is an input of the run) are refused before the work, not after a whole inference."""
    from pathlib import Path

    from calibkit.outputs.sets import META, check_not_input

    command = click.get_current_context().info_name or ""
    for key in OUTPUT_OPTIONS:
        value = kwargs.get(key)
        if not isinstance(value, (str, os.PathLike)) or not str(value):
            continue
        p = Path(value)
        if META in p.parts[:-1] or (key == "output_dir" and META in p.parts):
            raise CalibkitError(
                f"output {p} is inside a {META} folder, where calibkit keeps its publishing records; "
                "choose an output path outside it"
            )
        if key != "output_dir" and not p.is_dir():
            check_not_input(p, command)


def user_errors(fn: Callable) -> Callable:
    """Turn CalibkitError into a one-line message and exit code 1 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            from calibkit.outputs.scratch import sweep
            from calibkit.outputs.sets import note_inputs

            sweep()  # scratch folders of runs that were killed (SIGKILL, out of memory)
            note_inputs({k: v for k, v in kwargs.items() if k not in OUTPUT_OPTIONS})
            _early_output_checks(kwargs)
            return fn(*args, **kwargs)
        except CalibkitError as exc:
            signum = interrupt_behind(exc)  # e.g. a loader's import that the user's Ctrl-C broke
            if signum is not None:
                interrupted(signum)
            click.echo(f"calibkit: error: {exc}", err=True)
            raise SystemExit(getattr(exc, "exit_code", 1)) from None
        except MemoryError:
            click.echo(
                "calibkit: error: out of memory (an input the model declares, --size or --batch-size too large for this "
                "machine?): use smaller inputs, --size or --batch-size",
                err=True,
            )
            raise SystemExit(1) from None
        except KeyboardInterrupt as exc:
            interrupted(getattr(exc, "signum", 2))
        except Exception as exc:  # an interrupt that surfaced as a C extension's error (cli/signals.py)
            signum = interrupt_behind(exc)
            if signum is None:
                raise
            interrupted(signum)

    return wrapper
