"""``build``: the installed TensorRT major version picks the 10.x or 11.x path."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from calibkit.artifacts import trt_cache as cache_io
from calibkit.errors import CalibkitError
from calibkit.trt import installed_version, require
from calibkit.trt.prepare import prepare_v11
from calibkit.trt.spec import BuildSpec
from calibkit.trt.trtexec import command


def build(spec: BuildSpec) -> dict:
    major = require(None, "calibkit build")
    spec.check()
    version = installed_version() or ""
    if major >= 11:
        from calibkit.trt import build11

        res = build11.build(spec, version)
    else:
        from calibkit.trt import build10

        res = build10.build(spec, version)
    return {**res, **write_layer_report(spec)}


def write_layer_report(spec: BuildSpec) -> dict:
    """<engine>.layer-report.json from <engine>.layers.json: what each ONNX node ran in."""
    from calibkit.graph.model import load
    from calibkit.trt import layer_report

    rep = layer_report.report(
        spec.layer_info.read_text(encoding="utf-8"),
        load(spec.onnx),
        spec.keep_fp16,
        spec.quantized,
        str(spec.layer_info),
    )
    return {
        "layer_report": layer_report.write(rep, spec.layer_report),
        "layer_summary": layer_report.summary(rep),
        "fallbacks": rep["fallbacks"],
    }


def trtexec_major(spec: BuildSpec, asked: int | None, installed: int | None) -> tuple[int, str | None]:
    """The TensorRT major version a printed trtexec command is for, and why when it was inferred:
    --trt-major, else the installed TensorRT, else what the inputs allow."""
    if asked is not None:
        return asked, None
    if installed is not None:
        return installed, None
    if spec.qdq is not None:
        return 11, "--qdq: the strongly typed command (trtexec 10.x and 11.x both take --stronglyTyped)"
    if spec.int8 and spec.cache is not None:
        return (
            10,
            "a calibration cache is for TensorRT 10's --int8 --calib (11 has neither); --trt-major 11 builds calibkit's Q/DQ model instead",
        )
    raise CalibkitError(
        "no TensorRT installed to take the version from and the inputs do not decide it; pass --trt-major 10 or 11"
    )


def trtexec_line(spec: BuildSpec, major: int, trt_version: str | None = None, notes: list[str] | None = None) -> str:
    """The equivalent trtexec command; for 11.x the model it needs is prepared first, for 10.x the
    cache is re-headered for ``trt_version`` (a copy beside the engine) when its header differs."""
    notes = notes if notes is not None else []
    spec.check()
    if major < 11 and spec.ranges is not None:
        raise CalibkitError(
            "trtexec takes no per-tensor ranges: pass the cache (`calibkit calibrate` writes <model>.cache) with --cache instead of --ranges"
        )
    if major < 11 and spec.int8 and spec.cache is None:
        raise CalibkitError(
            "trtexec cannot read --data: it would calibrate on random inputs; write a cache with `calibkit calibrate` and pass --cache"
        )
    spec.check_shapes_given()
    if major < 11 and spec.cache is not None:
        spec = replace(spec, cache=_cache_for_trtexec(spec, trt_version, notes))
    model: Path | None = prepare_v11(spec) if major >= 11 else None
    return command(spec, major, model)


def _cache_for_trtexec(spec: BuildSpec, trt_version: str | None, notes: list[str]) -> Path:
    """trtexec's calibrator is an EntropyCalibrator2 of its own version: a copy of the cache with
    that header when ``trt_version`` is given (or the algorithm differs), else the cache as it is."""
    c = cache_io.read(spec.cache)
    want = cache_io.encode_version(trt_version) if trt_version else c.version
    if (c.version, c.algorithm) == (want, "EntropyCalibration2"):
        if not trt_version:
            notes.append(
                f"the cache's header is TRT-{c.version}-{c.algorithm}: TensorRT may skip a cache of another version; pass --trt-version X.Y.Z for a re-headered copy"
            )
        return spec.cache
    copy = spec.engine.with_name(f"{spec.engine.stem}.trt{want}.cache")
    cache_io.Cache(want, "EntropyCalibration2", c.scales).write(copy)
    notes.append(
        f"--calib names {copy}: calibkit's scales from {spec.cache.name} with the header TRT-{want}-EntropyCalibration2 (was TRT-{c.version}-{c.algorithm})"
    )
    return copy
