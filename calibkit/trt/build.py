"""``build``: the installed TensorRT major version picks the 10.x or 11.x path."""

from __future__ import annotations

from pathlib import Path

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

        return build11.build(spec, version)
    from calibkit.trt import build10

    return build10.build(spec, version)


def trtexec_line(spec: BuildSpec, major: int) -> str:
    """The equivalent trtexec command; for 11.x the model it needs is prepared first."""
    spec.check()
    if major < 11 and spec.int8 and spec.cache is None:
        raise CalibkitError("trtexec cannot read --data: it would calibrate on random inputs; write a cache with `calibkit calibrate` and pass --cache")
    spec.check_shapes_given()
    model: Path | None = prepare_v11(spec) if major >= 11 else None
    return command(spec, major, model)
