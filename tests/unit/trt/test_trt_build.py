"""`calibkit build`, the trtexec equivalent, model preparation for TensorRT 11, the
calibrator's cache side and the trt-* backends' absence, all without TensorRT (these run in
CI). What needs TensorRT itself is in test_trt_engine.py (skips without it)."""

from __future__ import annotations

import json
import shlex

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from calibkit.artifacts import trt_cache as cache_io
from calibkit.errors import CalibkitError
from calibkit.graph.model import input_specs, load
from calibkit.qdq.export import activation_qdq
from calibkit.trt import device, unavailable_reason
from calibkit.trt.feed import CalibrationFeed

NO_TRT = unavailable_reason() is not None


@pytest.fixture
def calibrated(cli, tmp_path, conv_model, conv_data):
    cli("calibrate", conv_model, "--data", conv_data, "--method", "percentile:99.9", "-o", tmp_path / "out")
    return tmp_path / "out" / "conv.cache"


def _args(cmd: str) -> dict[str, str]:
    parts = shlex.split(cmd)
    assert parts[0] == "trtexec"
    return dict((p.split("=", 1) + [""])[:2] for p in parts[1:])


@pytest.mark.skipif(not NO_TRT, reason="TensorRT is installed here")
def test_build_without_tensorrt_is_one_line(cli, tmp_path, conv_model, calibrated):
    p = cli("build", conv_model, "--engine", tmp_path / "e.plan", "--int8", "--cache", calibrated, expect=1)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert "calibkit[tensorrt10]" in lines[0] and "NVIDIA GPU" in lines[0]
    assert not (tmp_path / "e.plan").exists()


def test_trtexec_for_10(cli, tmp_path, conv_model, calibrated):
    p = cli(
        "build",
        conv_model,
        "--engine",
        tmp_path / "e.plan",
        "--int8",
        "--cache",
        calibrated,
        "--fp16",
        "--shapes",
        "x:1x3x8x8/4x3x8x8/16x3x8x8",
        "--keep-fp16",
        "conv2,fc",
        "--print-trtexec",
        "--trt-major",
        "10",
    )
    a = _args(p.stdout.strip())
    assert a["--onnx"] == str(conv_model) and a["--calib"] == str(calibrated) and "--int8" in a and "--fp16" in a
    assert a["--minShapes"] == "x:1x3x8x8" and a["--optShapes"] == "x:4x3x8x8" and a["--maxShapes"] == "x:16x3x8x8"
    assert a["--layerPrecisions"] == "conv2:fp16,fc:fp16" and a["--precisionConstraints"] == "obey"
    assert a["--timingCacheFile"] == str(tmp_path / "e.timing.cache")


def test_trtexec_for_11_prepares_the_qdq_model(cli, tmp_path, conv_model, calibrated):
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
    a = _args(p.stdout.strip())
    assert "--stronglyTyped" in a and "--int8" not in a and "--fp16" not in a and "--calib" not in a
    assert a["--onnx"] == str(tmp_path / "e.trt11.fp16.onnx")  # the kept layer runs FP16 (see test_trt_fake_build)
    qdq = onnx.load(str(tmp_path / "e.trt11.qdq.onnx"))
    scales = cache_io.read(calibrated).scales
    layers = activation_qdq(qdq)
    assert layers and all(
        np.float32(s) == np.float32(scales[t]) for t, (_, s) in layers.items()
    )  # calibkit's scales, bit for bit
    fc_inputs = [n for n in qdq.graph.node if n.name == "fc"][0].input
    assert not any("DequantizeLinear" in i for i in fc_inputs)  # the kept layer gets no Q/DQ


def test_trtexec_for_11_fp16_and_int8(cli, tmp_path, conv_model, calibrated):
    p = cli(
        "build",
        conv_model,
        "--engine",
        tmp_path / "e.plan",
        "--int8",
        "--cache",
        calibrated,
        "--fp16",
        "--print-trtexec",
        "--trt-major",
        "11",
        "--shapes",
        "x:1x3x8x8/4x3x8x8/8x3x8x8",
    )
    model = onnx.load(_args(p.stdout.strip())["--onnx"])
    onnx.checker.check_model(model)
    types = {i.name: i.data_type for i in model.graph.initializer}
    assert TensorProto.FLOAT16 in types.values()
    q_scales = [n.input[1] for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert q_scales and all(
        types.get(s, TensorProto.FLOAT) == TensorProto.FLOAT for s in q_scales
    )  # Q/DQ scales stay FP32
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT  # FP32 I/O kept


def test_from_report_reads_validate_results(cli, tmp_path, conv_model, conv_data, calibrated):
    cli(
        "validate",
        conv_model,
        "--scales",
        calibrated.parent / "scales.json",
        "--data",
        conv_data,
        "--backends",
        "ort-int8,trt-int8",
        "--fallback-sqnr",
        "200",
        "--report",
        tmp_path / "r.html",
        "--device",
        "cpu",
    )
    doc = json.loads((tmp_path / "r.results.json").read_text())
    nodes = doc["candidates"][1]["fp16_fallback"]["nodes"]
    assert nodes
    if NO_TRT:
        assert [u["backend"] for u in doc["unavailable"]] == ["trt-int8"] and "calibkit[tensorrt10]" in doc[
            "unavailable"
        ][0]["reason"]
    p = cli(
        "build",
        conv_model,
        "--engine",
        tmp_path / "e.plan",
        "--int8",
        "--cache",
        calibrated,
        "--from-report",
        tmp_path / "r.results.json",
        "--print-trtexec",
        "--trt-major",
        "10",
        "--shapes",
        "x:1x3x8x8/4x3x8x8/8x3x8x8",
    )
    assert _args(p.stdout.strip())["--layerPrecisions"] == ",".join(f"{n}:fp16" for n in nodes)
    (tmp_path / "layers.txt").write_text("# keep\nconv1\n\nfc\n")
    p = cli(
        "build",
        conv_model,
        "--engine",
        tmp_path / "e.plan",
        "--int8",
        "--cache",
        calibrated,
        "--from-report",
        tmp_path / "layers.txt",
        "--print-trtexec",
        "--trt-major",
        "10",
        "--shapes",
        "x:1x3x8x8/4x3x8x8/8x3x8x8",
    )
    assert _args(p.stdout.strip())["--layerPrecisions"] == "conv1:fp16,fc:fp16"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--cache", "X"], "add --int8"),
        (["--int8"], "--cache"),
        (["--int8", "--cache", "missing.cache"], "not found"),
        (["--fp16", "--shapes", "x:1x3x8x8/4x3x8x8"], "MIN/OPT/MAX"),
        (["--fp16", "--shapes", "x:1x3x8"], "does not fit"),
        (["--fp16", "--shapes", "y:1x3x8x8"], "inputs are: x"),
        (["--fp16", "--shapes", "x:4x3x8x8/1x3x8x8/8x3x8x8"], "MIN <= OPT <= MAX"),
        (["--fp16", "--keep-fp16", "conv1"], "add --int8 or --qdq"),
    ],
)
def test_build_user_errors(cli, tmp_path, conv_model, args, message):
    p = cli(
        "build", conv_model, "--engine", tmp_path / "e.plan", *args, "--print-trtexec", "--trt-major", "10", expect=1
    )
    assert len(p.stderr.strip().splitlines()) == 1 and message in p.stderr, p.stderr


def test_print_trtexec_needs_a_version_without_tensorrt(cli, tmp_path, conv_model):
    if not NO_TRT:
        pytest.skip("TensorRT is installed here")
    p = cli("build", conv_model, "--engine", tmp_path / "e.plan", "--fp16", "--print-trtexec", expect=1)
    assert "--trt-major" in p.stderr


def test_feed_hands_calibkit_cache_to_any_calibrator(tmp_path, conv_model, calibrated):
    specs = input_specs(load(conv_model))
    original = cache_io.read(calibrated)
    for algorithm in ("EntropyCalibration2", "MinMaxCalibration", "LegacyCalibration"):
        feed = CalibrationFeed(
            specs, algorithm, cache_in=calibrated, cache_out=tmp_path / "w.cache", trt_version="10.16.1"
        )
        text = feed.read_cache().decode()
        assert text.splitlines()[0] == f"TRT-101601-{algorithm}"
        assert cache_io.parse(text).scales == original.scales
        feed.write_cache(memoryview(text.encode()))
        assert (tmp_path / "w.cache").read_text() == text
        with pytest.raises(CalibkitError, match="rejected the cache"):
            feed.next_pointers(["x"])  # TensorRT asking for data means it refused calibkit's cache


def test_feed_needs_data_or_cache(conv_model):
    with pytest.raises(CalibkitError, match="--data .* or --cache"):
        CalibrationFeed(input_specs(load(conv_model)), "EntropyCalibration2")


def test_calibration_batch_follows_opt_shape(conv_model, conv_data):
    feed = CalibrationFeed(
        input_specs(load(conv_model)),
        "EntropyCalibration2",
        batch_size=8,
        data=str(conv_data),
        opt_shapes={"x": (4, 3, 8, 8)},
    )
    assert feed.batch_size == 4


@pytest.mark.skipif(bool(device.available()), reason="a CUDA library is installed here")
def test_device_memory_missing_names_what_to_install():
    with pytest.raises(CalibkitError, match="pip install cuda-python"):
        device.open_device()


def test_import_needs_no_tensorrt():
    import subprocess
    import sys

    code = "import sys, calibkit.trt, calibkit.trt.calibrators, calibkit.trt.build, calibkit.trt.runner; assert 'tensorrt' not in sys.modules and 'cuda' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.skipif(not NO_TRT, reason="TensorRT is installed here")
def test_calibrator_class_without_tensorrt():
    from calibkit.trt.calibrators import calibrator_class

    with pytest.raises(CalibkitError, match="NVIDIA GPU"):
        calibrator_class("entropy2")


def test_fp16_model_from_prepare_matches_numpy_rounding(tmp_path, conv_model):
    from calibkit.trt.prepare import to_fp16

    m = to_fp16(onnx.load(str(conv_model)))
    w1 = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}["w1"]
    orig = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(conv_model)).graph.initializer}["w1"]
    assert w1.dtype == np.float16 and np.array_equal(w1, orig.astype(np.float16))


def test_trtexec_10_checks_cache_layers_and_data(cli, tmp_path, conv_model, conv_data):
    """From the new-user attack: TensorRT 10 commands are printed only for inputs that make sense."""
    cli("calibrate", conv_model, "--data", conv_data, "-o", tmp_path / "cal")
    cache = tmp_path / "cal" / "conv.cache"
    bad = tmp_path / "bad.cache"
    bad.write_text("garbage\n")
    base = ["build", conv_model, "--engine", tmp_path / "e.plan", "--print-trtexec", "--trt-major", "10", "--int8"]
    assert "bad header" in cli(*base, "--cache", bad, expect=1).stderr
    other = tmp_path / "other.cache"
    other.write_text("TRT-101601-EntropyCalibration2\nnot_here: 3c010a14\n")
    assert "has no tensor of" in cli(*base, "--cache", other, expect=1).stderr
    assert "no node named 'nosuch'" in cli(*base, "--cache", cache, "--keep-fp16", "nosuch", expect=1).stderr
    assert "random inputs" in cli(*base, "--data", conv_data, expect=1).stderr
    rep = tmp_path / "r.json"
    rep.write_text('{"candidates": [{"fp16_fallback": {"nodes": "conv1"}}]}')
    assert "must be a list" in cli(*base, "--cache", cache, "--from-report", rep, expect=1).stderr
    ok = cli(*base, "--cache", cache, "--keep-fp16", "conv1", "--shapes", "x:1x3x8x8/4x3x8x8/8x3x8x8")
    assert "--layerPrecisions=conv1:fp16" in ok.stdout
