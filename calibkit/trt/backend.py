"""``trt-int8`` / ``trt-fp16`` candidates for validate/compare: the engine is built on the
first batch (its shape sets the optimization profile: MIN batch 1, OPT = MAX = the batch)
from calibkit's scales (10.x: a calibration cache; 11.x: the Q/DQ model), then run through
:class:`~calibkit.trt.runner.EngineRunner`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from calibkit.artifacts import trt_cache as cache_io
from calibkit.errors import CalibkitError
from calibkit.graph.model import input_specs
from calibkit.numerics.formats import INT8


class LazyEngine:
    def __init__(self, backend: str, model: onnx.ModelProto, workdir: Path, amax: dict[str, float] | None) -> None:
        self.backend, self.model, self.workdir, self.amax = backend, model, workdir, amax
        self.runner = None
        self.built: dict | None = None
        self.candidate = None  # the validate Candidate whose note gets the layer report

    def _build(self, feed: dict[str, np.ndarray]) -> None:
        from calibkit.trt import installed_version
        from calibkit.trt.build import build
        from calibkit.trt.runner import EngineRunner
        from calibkit.trt.spec import BuildSpec

        tag = self.backend.replace("trt-", "")
        model_path = self.workdir / f"trt-{tag}.onnx"
        onnx.save(self.model, str(model_path))
        shapes = {}
        for spec in input_specs(self.model):
            if any(not isinstance(d, int) for d in spec.shape):
                opt = tuple(int(d) for d in feed[spec.name].shape)
                shapes[spec.name] = ((1, *opt[1:]), opt, opt)
        spec = BuildSpec(model_path, self.workdir / f"trt-{tag}.plan", shapes=shapes, fp16=tag == "fp16")
        if tag == "int8":
            scales = {t: a / INT8.qmax for t, a in (self.amax or {}).items() if np.isfinite(a) and a > 0}
            version = installed_version() or cache_io.DEFAULT_TRT_VERSION
            spec.cache = cache_io.Cache(cache_io.encode_version(version), "EntropyCalibration2", scales).write(
                self.workdir / "trt-int8.cache"
            )
            spec.int8 = True
        self.built = build(spec)
        if self.candidate is not None and self.built.get("layer_summary"):
            self.candidate.note += f"; layers: {self.built['layer_summary']}"
        self.runner = EngineRunner(self.built["engine"])

    def run(self, output_names: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        if self.runner is None:
            self._build(feed)
        return self.runner.run(output_names, feed)


def candidate(
    backend: str,
    model: onnx.ModelProto,
    output_names: list[str],
    workdir: Path,
    amax: dict[str, float] | None,
    method: str | None,
):
    """A validate Candidate, or ``Unavailable`` with the reason when TensorRT cannot run here."""
    from calibkit.trt import installed_major, unavailable_reason
    from calibkit.validate.candidate import Candidate, Unavailable

    why = unavailable_reason()
    if why:
        raise Unavailable(why)
    if backend == "trt-int8" and amax is None:
        raise CalibkitError("backend trt-int8 needs scales: pass --scales scales.json (or --histograms)")
    major = installed_major()
    how = {
        ("int8", 10): "TensorRT 10 INT8 (calibkit cache via calibrator, FP32 fallback)",
        ("int8", 11): "TensorRT 11 strongly typed Q/DQ model",
        ("fp16", 10): "TensorRT 10 FP16 builder flag",
        ("fp16", 11): "TensorRT 11 strongly typed FP16 model",
    }[(backend[4:], 11 if (major or 10) >= 11 else 10)]
    label = f"{backend} ({method})" if method and backend == "trt-int8" else backend
    # engine build time lands in the first batch's latency; later batches are pure execution
    engine = LazyEngine(backend, model, workdir, amax)
    report = workdir / f"trt-{backend[4:]}.layer-report.json"
    cand = Candidate(
        label,
        backend,
        engine,
        output_names,
        note=how + f" (first batch includes the build; layer report {report})",
        method=method,
    )
    engine.candidate = cand
    return cand
