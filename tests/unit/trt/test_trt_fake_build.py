"""calibkit's TensorRT build code driven by a fake ``tensorrt`` that follows the exact signatures of
10.16.1.11 / 11.4.0.106 (tests/helpers/fake_trt.py): wrong arity, keywords or read-only
properties fail as they would with TensorRT, and the builder calls calibrators as pyInt8.cpp
does. This tests calibkit's logic around TensorRT; it runs no TensorRT."""

from __future__ import annotations

import shlex
from pathlib import Path

import fake_trt
import numpy as np
import onnx
import pytest
from onnx import TensorProto

from calibkit.errors import CalibkitError
from calibkit.trt.spec import BuildSpec


@pytest.fixture
def calibrated(cli, tmp_path, conv_model, conv_data):
    cli("calibrate", conv_model, "--data", conv_data, "-o", tmp_path / "out")
    return tmp_path / "out" / "conv.cache"


SHAPES = {"x": ((1, 3, 8, 8), (4, 3, 8, 8), (8, 3, 8, 8))}


def _build(spec: BuildSpec) -> dict:
    from calibkit.trt.build import build

    return build(spec)


def _spec(tmp_path, model, **kw) -> BuildSpec:
    return BuildSpec(Path(model), tmp_path / "e.plan", shapes=SHAPES, timing_cache=tmp_path / "e.timing.cache", **kw)


# -- definite bug 1: legacy calibrator overrides as TensorRT calls them ----------------------
def test_legacy_calibrator_is_called_with_tensorrt_arguments(monkeypatch, tmp_path, conv_model, conv_data):
    trt = fake_trt.install(monkeypatch, 10)
    res = _build(_spec(tmp_path, conv_model, int8=True, data=str(conv_data), calibrator="legacy"))
    assert not [line for line in trt.world.log if "Exception caught" in line], trt.world.log
    assert res["calibration_batches"] == trt.world.batches == 9  # 37 samples, batch 4 at OPT: 9 full batches


# -- definite bug 2: the calibrator's stored error is what the user sees ---------------------
def test_rejected_cache_error_survives_the_failed_build(monkeypatch, tmp_path, conv_model, calibrated):
    fake_trt.install(monkeypatch, 10, fake_trt.World(reject_cache=True))
    with pytest.raises(CalibkitError, match="rejected the cache"):
        _build(_spec(tmp_path, conv_model, int8=True, cache=calibrated))


# -- definite bug 3: no engine or timing cache after a calibrator error ----------------------
def test_calibrator_error_mid_way_leaves_no_engine(monkeypatch, tmp_path, conv_model, conv_data):
    from calibkit.trt import feed as feed_mod

    trt = fake_trt.install(monkeypatch, 10)
    real = feed_mod.CalibrationFeed.next_pointers

    def flaky(self, names):
        if self.batches_served >= 2:
            raise CalibkitError("calibration batch 3 is broken")
        return real(self, names)

    monkeypatch.setattr(feed_mod.CalibrationFeed, "next_pointers", flaky)
    with pytest.raises(CalibkitError, match="batch 3 is broken"):
        _build(_spec(tmp_path, conv_model, int8=True, data=str(conv_data)))
    assert trt.world.batches == 2  # TensorRT built on the 2 batches it got ...
    assert (
        not (tmp_path / "e.plan").exists() and not (tmp_path / "e.timing.cache").exists()
    )  # ... calibkit kept none of it


# -- definite bug 4: --print-trtexec asks for --shapes on dynamic inputs ---------------------
def test_print_trtexec_needs_shapes_for_dynamic_inputs(cli, tmp_path, conv_model, calibrated):
    p = cli(
        "build",
        conv_model,
        "--engine",
        tmp_path / "e.plan",
        "--int8",
        "--cache",
        calibrated,
        "--print-trtexec",
        "--trt-major",
        "10",
        expect=1,
    )
    assert "'x'" in p.stderr and "--shapes x:MIN/OPT/MAX" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    ok = cli(
        "build",
        conv_model,
        "--engine",
        tmp_path / "e.plan",
        "--int8",
        "--cache",
        calibrated,
        "--print-trtexec",
        "--trt-major",
        "10",
        "--shapes",
        "x:1x3x8x8/4x3x8x8/8x3x8x8",
    )
    assert "--optShapes=x:4x3x8x8" in ok.stdout


def test_python_build_needs_shapes_for_dynamic_inputs(monkeypatch, tmp_path, conv_model, calibrated):
    fake_trt.install(monkeypatch, 10)
    spec = BuildSpec(Path(conv_model), tmp_path / "e.plan", int8=True, cache=calibrated)
    with pytest.raises(CalibkitError, match="--shapes x:MIN/OPT/MAX"):
        _build(spec)


# -- definite bug 5: TensorRT 11 layers kept in FP16 really are FP16 -------------------------
def _onnx_arg(stdout: str) -> str:
    return next(a.split("=", 1)[1] for a in shlex.split(stdout.strip().splitlines()[-1]) if a.startswith("--onnx="))


def test_trt11_kept_layers_run_fp16_and_it_says_so(cli, tmp_path, conv_model, calibrated):
    p = cli(
        "build",
        conv_model,
        "--engine",
        tmp_path / "e.plan",
        "--int8",
        "--cache",
        calibrated,
        "--keep-fp16",
        "fc",
        "--print-trtexec",
        "--trt-major",
        "11",
        "--shapes",
        "x:1x3x8x8/4x3x8x8/8x3x8x8",
    )
    model = onnx.load(_onnx_arg(p.stdout))
    fc = next(n for n in model.graph.node if n.name == "fc")
    inits = {i.name: i.data_type for i in model.graph.initializer}
    assert inits[fc.input[1]] == TensorProto.FLOAT16  # the kept Gemm computes in FP16, not FP32
    assert "FP16" in p.stderr and "fc" in p.stderr


def test_trt11_build_reports_fp16_conversion(monkeypatch, tmp_path, conv_model, calibrated):
    fake_trt.install(monkeypatch, 11)
    res = _build(_spec(tmp_path, conv_model, int8=True, cache=calibrated, keep_fp16=["fc"]))
    assert res["parsed"].name.endswith(".fp16.onnx") and any("FP16" in n for n in res["notes"])


def test_trt10_keeps_layers_with_fp16_flag_and_constraints(monkeypatch, tmp_path, conv_model, calibrated):
    trt = fake_trt.install(monkeypatch, 10)
    res = _build(_spec(tmp_path, conv_model, int8=True, cache=calibrated, keep_fp16=["conv2"]))
    prec = {layer["name"]: layer["precision"] for layer in trt.world.built}
    assert prec["conv2"] == "HALF" and prec["conv1"] == "INT8" and res["kept_fp16"] == 1


def test_fake_follows_the_signatures(monkeypatch):
    """The fake rejects what TensorRT rejects (so the tests above can fail)."""
    trt = fake_trt.install(monkeypatch, 10)
    b = trt.Builder(trt.Logger(trt.Logger.WARNING))
    config = b.create_builder_config()
    with pytest.raises(TypeError, match="incompatible function arguments"):
        config.set_timing_cache(config.create_timing_cache(b""))
    with pytest.raises(AttributeError, match="not a property"):
        config.no_such_thing = 1
    assert np.all([hasattr(trt, c) for c in ("IInt8LegacyCalibrator", "IInt8EntropyCalibrator2")])
    assert not hasattr(fake_trt.make(11), "IInt8EntropyCalibrator2")
