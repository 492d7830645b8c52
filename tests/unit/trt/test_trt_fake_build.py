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


# -- likely bugs ---------------------------------------------------------------------------
SHAPE_ARGS = ["--shapes", "x:1x3x8x8/4x3x8x8/8x3x8x8"]


def test_print_trtexec_takes_the_major_from_the_inputs(cli, tmp_path, conv_model, calibrated):
    from calibkit.qdq.export import export_qdq
    from calibkit.trt import installed_major

    if installed_major() is not None:
        pytest.skip("TensorRT is installed here: its version decides")
    p = cli(
        "build",
        conv_model,
        "--engine",
        tmp_path / "e.plan",
        "--int8",
        "--cache",
        calibrated,
        "--print-trtexec",
        *SHAPE_ARGS,
    )
    assert "--int8" in p.stdout and f"--calib={calibrated}" in p.stdout and "TensorRT 10" in p.stderr
    qdq = export_qdq(
        onnx.load(str(conv_model)), {"x": 4.0, "r1": 3.0, "flat": 2.0}, tmp_path / "m.qdq.onnx", placement="trt"
    )
    p = cli("build", conv_model, "--engine", tmp_path / "e.plan", "--qdq", qdq, "--print-trtexec", *SHAPE_ARGS)
    assert "--stronglyTyped" in p.stdout and "--int8" not in p.stdout and "strongly typed" in p.stderr


def test_print_trtexec_reheaders_the_cache_for_trt_version(cli, tmp_path, conv_model, calibrated):
    from calibkit.artifacts import trt_cache

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
        "--trt-version",
        "10.8.0",
        *SHAPE_ARGS,
    )
    calib = next(a.split("=", 1)[1] for a in shlex.split(p.stdout.strip()) if a.startswith("--calib="))
    copy = trt_cache.read(calib)
    assert Path(calib) != calibrated and copy.version == 100800 and copy.algorithm == "EntropyCalibration2"
    assert copy.scales == trt_cache.read(calibrated).scales and "TRT-100800-EntropyCalibration2" in p.stderr
    plain = cli(
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
        *SHAPE_ARGS,
    )
    assert f"--calib={calibrated}" in plain.stdout and "--trt-version" in plain.stderr  # says how to get a copy


def test_kept_node_is_kept_in_every_layer_it_became(monkeypatch, tmp_path, conv_model, calibrated):
    trt = fake_trt.install(monkeypatch, 10, fake_trt.World(fold={"flatten"}))
    res = _build(_spec(tmp_path, conv_model, int8=True, cache=calibrated, keep_fp16=["fc", "flatten"]))
    prec = {layer["name"]: layer["precision"] for layer in trt.world.built}
    assert prec["fc"] == prec["fc_bias"] == "HALF" and prec["conv1"] == "INT8"  # the Gemm became 2 layers: both kept
    assert any("flatten" in n and "no TensorRT layer" in n for n in res["notes"])  # the miss is reported


def _two_input(tmp_path):
    import models

    from calibkit.artifacts import trt_cache

    model = models.two_input_net(tmp_path / "two.onnx")
    cache = trt_cache.Cache(101601, "EntropyCalibration2", {"a": 0.01, "b": 0.01, "mm": 0.02, "sum": 0.03}).write(
        tmp_path / "two.cache"
    )
    shapes = {n: ((1, *d), (4, *d), (8, *d)) for n, d in (("a", (4,)), ("b", (4,)), ("idx", (1,)))}
    return model, cache, shapes


def test_kept_layer_with_integer_output_builds(monkeypatch, tmp_path):
    trt = fake_trt.install(monkeypatch, 10)
    model, cache, shapes = _two_input(tmp_path)
    spec = BuildSpec(model, tmp_path / "e.plan", int8=True, cache=cache, shapes=shapes, keep_fp16=["shape", "mm"])
    res = _build(spec)  # forcing the INT64 Shape output to FP16 under OBEY fails a TensorRT build
    prec = {layer["name"]: layer["precision"] for layer in trt.world.built}
    assert prec["mm"] == "HALF" and res["kept_fp16"] == 1 and not trt.world.log


def test_legacy_calibrator_refuses_a_cache(cli, tmp_path, conv_model, calibrated):
    p = cli(
        "build",
        conv_model,
        "--engine",
        tmp_path / "e.plan",
        "--int8",
        "--cache",
        calibrated,
        "--calibrator",
        "legacy",
        "--print-trtexec",
        "--trt-major",
        "10",
        *SHAPE_ARGS,
        expect=1,
    )
    assert "legacy cannot take --cache" in p.stderr and "quantile" in p.stderr


def test_fp16_input_is_calibrated_with_float32_batches(tmp_path):
    from onnx import helper

    from calibkit.graph.model import input_specs, load
    from calibkit.trt.feed import CalibrationFeed

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"], name="relu")],
        "h",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["N", 4])],
    )
    path = tmp_path / "h.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    x = np.linspace(-2, 2, 32, dtype=np.float16).reshape(8, 4)
    np.savez(tmp_path / "h.npz", x=x)
    mem = fake_trt.HostMemory()
    feed = CalibrationFeed(
        input_specs(load(path)), "EntropyCalibration2", batch_size=4, data=str(tmp_path / "h.npz"), device=mem
    )
    (ptr,) = feed.next_pointers(["x"])
    assert mem._bufs[ptr].nbytes == 4 * 4 * 4  # float32, not float16
    assert np.array_equal(mem._bufs[ptr].view(np.float32).reshape(4, 4), x[:4].astype(np.float32))


def test_refused_timing_cache_is_an_error(monkeypatch, tmp_path, conv_model, calibrated):
    fake_trt.install(monkeypatch, 10, fake_trt.World(timing_cache_ok=False))
    (tmp_path / "e.timing.cache").write_bytes(b"from another GPU")
    with pytest.raises(CalibkitError, match="refused the timing cache"):
        _build(_spec(tmp_path, conv_model, int8=True, cache=calibrated))
    assert not (tmp_path / "e.plan").exists()


def test_extras_for_both_tensorrt_lines():
    import tomllib

    from calibkit.trt import INSTALL

    extras = tomllib.loads((Path(__file__).resolve().parents[3] / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert any(r.startswith("tensorrt>=10") and "<11" in r for r in extras["tensorrt10"])
    assert any(r.startswith("tensorrt>=11") and "<12" in r for r in extras["tensorrt11"])
    assert "calibkit[tensorrt10]" in INSTALL and "calibkit[tensorrt11]" in INSTALL


# -- --ranges: calibkit's amaxes as TensorRT 10 dynamic ranges -----------------------------
def test_ranges_set_calibkit_amax_on_each_tensor(monkeypatch, tmp_path, conv_model, calibrated):
    from calibkit.artifacts import scales as scales_io

    trt = fake_trt.install(monkeypatch, 10)
    scales = calibrated.parent / "scales.json"
    amax = scales_io.read(scales).amax()
    captured = {}
    real_apply = __import__("calibkit.trt.ranges", fromlist=["apply"]).apply

    def spy(network, a):
        out = real_apply(network, a)
        captured.update(
            {t.name: t._range for i in range(network.num_layers) for t in network.get_layer(i)._outputs if t._range}
        )
        captured.update({t.name: t._range for t in network._inputs if t._range})
        return out

    monkeypatch.setattr("calibkit.trt.ranges.apply", spy)
    res = _build(_spec(tmp_path, conv_model, int8=True, ranges=scales, keep_fp16=["fc"]))
    assert captured and all(captured[n] == (-amax[n], amax[n]) for n in captured)
    assert set(captured) == {n for n in amax if n in captured} and res["ranges"] == len(captured)
    assert (
        not getattr(trt.world, "calls", None) or "IBuilderConfig.set_calibration_profile" not in trt.world.calls
    )  # no calibrator
    prec = {layer["name"]: layer["precision"] for layer in trt.world.built}
    assert prec["conv2"] == "INT8" and prec["fc"] == prec["fc_bias"] == "HALF"


def test_ranges_from_a_cache_equal_the_cache(tmp_path, calibrated):
    from calibkit.artifacts import trt_cache
    from calibkit.trt.ranges import read_amax

    amax = read_amax(calibrated)
    assert amax == {n: s * 127 for n, s in trt_cache.read(calibrated).scales.items()}


def test_ranges_on_11_build_the_qdq_model(monkeypatch, tmp_path, conv_model, calibrated):
    from calibkit.qdq.export import activation_qdq

    fake_trt.install(monkeypatch, 11)
    res = _build(_spec(tmp_path, conv_model, int8=True, ranges=calibrated.parent / "scales.json"))
    assert res["parsed"].name == "e.trt11.qdq.onnx" and activation_qdq(onnx.load(str(res["parsed"])))


@pytest.mark.parametrize(
    "extra, message",
    [(["--cache", "C"], "without --cache"), ([], "with --int8")],
)
def test_ranges_user_errors(cli, tmp_path, conv_model, calibrated, extra, message):
    args = [a if a != "C" else str(calibrated) for a in extra]
    int8 = ["--int8"] if extra else []
    p = cli(
        "build",
        conv_model,
        "--engine",
        tmp_path / "e.plan",
        *int8,
        "--ranges",
        calibrated.parent / "scales.json",
        *args,
        "--print-trtexec",
        "--trt-major",
        "10",
        *SHAPE_ARGS,
        expect=1,
    )
    assert message in p.stderr and len(p.stderr.strip().splitlines()) == 1
