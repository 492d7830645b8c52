"""Real TensorRT builds and runs (skip, with the reason, where TensorRT cannot be imported;
they need an NVIDIA GPU). Nothing here fakes TensorRT."""

from __future__ import annotations

import json

import numpy as np
import pytest

from calibkit.trt import installed_major, unavailable_reason

WHY = unavailable_reason()
if WHY:
    pytest.skip(WHY, allow_module_level=True)


@pytest.fixture
def calibrated(cli, tmp_path, conv_model, conv_data):
    cli("calibrate", conv_model, "--data", conv_data, "-o", tmp_path / "out")
    return tmp_path / "out" / "conv.cache"


def _ort(model, x):
    import onnxruntime as ort

    return ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(["y"], {"x": x})[0]


@pytest.mark.parametrize("flags", [["--int8"], ["--int8", "--fp16"], ["--fp16"]])
def test_build_and_run_close_to_fp32(cli, tmp_path, conv_model, conv_data, calibrated, flags):
    from calibkit.trt.runner import EngineRunner

    extra = ["--cache", str(calibrated)] if "--int8" in flags else []
    cli("build", conv_model, "--engine", tmp_path / "e.plan", *flags, *extra, "--shapes", "x:1x3x8x8/8x3x8x8/16x3x8x8")
    assert (tmp_path / "e.plan").stat().st_size > 0 and (tmp_path / "e.timing.cache").is_file()
    x = np.load(conv_data)["x"][:8]
    runner = EngineRunner(tmp_path / "e.plan")
    try:
        y = runner.run(["y"], {"x": x})[0]
    finally:
        runner.close()
    ref = _ort(conv_model, x)
    cos = float((y * ref).sum() / np.linalg.norm(y) / np.linalg.norm(ref))
    assert cos > 0.98, cos


@pytest.mark.skipif(installed_major() != 10, reason="TensorRT 11 has no calibrators")
@pytest.mark.parametrize("calibrator", ["entropy2", "entropy", "minmax", "legacy"])
def test_tensorrt_calibrates_from_calibkit_data(cli, tmp_path, conv_model, conv_data, calibrator):
    p = cli(
        "build",
        conv_model,
        "--engine",
        tmp_path / "e.plan",
        "--int8",
        "--data",
        conv_data,
        "--batch-size",
        "4",
        "--calibrator",
        calibrator,
        "--write-cache",
        tmp_path / "trt.cache",
        "--shapes",
        "x:1x3x8x8/4x3x8x8/8x3x8x8",
    )
    assert "calibrated on 9 batches" in p.stderr
    assert (tmp_path / "trt.cache").read_text().startswith("TRT-")


def test_validate_runs_trt_backends(cli, tmp_path, conv_model, conv_data, calibrated):
    cli(
        "validate",
        conv_model,
        "--scales",
        calibrated.parent / "scales.json",
        "--data",
        conv_data,
        "--backends",
        "trt-int8,trt-fp16",
        "--report",
        tmp_path / "r.html",
    )
    doc = json.loads((tmp_path / "r.results.json").read_text())
    assert {c["backend"] for c in doc["candidates"][1:]} == {"trt-int8", "trt-fp16"} and not doc["unavailable"]
    assert all(c["latency"]["median_ms"] > 0 for c in doc["candidates"])
