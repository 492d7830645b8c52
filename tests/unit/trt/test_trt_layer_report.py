"""The layer report: TensorRT's engine information JSON (IEngineInspector / trtexec
--exportLayerInfo) read into the precision each ONNX node ran in. The fixture
fixtures/conv_int8_fc_fp16.layers.json is hand-written in trtexec's documented layout (its
_comment says where the layout comes from); builds here use the signature-following fake."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import fake_trt
import onnx
import pytest

from calibkit.errors import CalibkitError
from calibkit.trt import layer_report as lr
from calibkit.trt.spec import BuildSpec

FIXTURE = Path(__file__).parent / "fixtures" / "conv_int8_fc_fp16.layers.json"
SHAPES = {"x": ((1, 3, 8, 8), (4, 3, 8, 8), (8, 3, 8, 8))}


@pytest.fixture
def calibrated(cli, tmp_path, conv_model, conv_data):
    cli("calibrate", conv_model, "--data", conv_data, "-o", tmp_path / "out")
    return tmp_path / "out" / "conv.cache"


def test_trtexec_layer_info_per_onnx_node(conv_model):
    rep = lr.report(FIXTURE.read_text(), onnx.load(str(conv_model)), kept=["fc", "nosuch"])
    prec = {n: e["precisions"] for n, e in rep["nodes"].items()}
    assert prec == {
        "conv1": ["INT8"],
        "relu1": ["INT8"],
        "conv2": ["INT8"],
        "add": ["INT8"],
        "relu2": ["INT8"],
        "gap": ["INT8"],
        "flatten": ["FP16"],
        "fc": ["FP16"],
    }  # fused layers count for each of their nodes
    assert rep["fallbacks"] == [] and rep["kept"] == {"fp16": ["fc"], "not_fp16": [], "matched_nothing": ["nosuch"]}
    assert len(rep["layers_without_node"]) == 3 and rep["counts"] == {"FP16": 2, "FP32": 2, "INT8": 3}
    assert "kept names that matched no layer: nosuch" in lr.summary(rep)


def test_a_layer_that_fell_back_is_named(conv_model):
    doc = json.loads(FIXTURE.read_text())
    conv2 = next(layer for layer in doc["Layers"] if layer["Name"] == "conv2 + add + relu2")
    for t in conv2["Inputs"] + conv2["Outputs"]:
        t["Format/Datatype"] = "Row major linear FP32"
    fc = next(layer for layer in doc["Layers"] if layer["Name"] == "flatten + fc")
    fc["Inputs"][0]["Format/Datatype"] = "Row major linear FP32"
    rep = lr.report(doc, onnx.load(str(conv_model)), kept=["fc"])
    assert rep["fallbacks"] == [{"node": "conv2", "op": "Conv", "expected": "INT8", "got": ["FP32"]}]
    assert rep["kept"]["not_fp16"] == ["fc"]  # the kept Gemm ran FP32, not FP16
    assert "1 not in INT8: conv2 (FP32)" in lr.summary(rep) and "kept but not FP16: fc" in lr.summary(rep)


@pytest.mark.parametrize(
    "fmt, want",
    [
        ("Thirty-two wide channel vectorized row major Int8 format.", "INT8"),
        ("Row major linear FP16 format", "FP16"),
        ("Half", "FP16"),
        ("Float", "FP32"),
        ("Row major linear FP32", "FP32"),
        ("Row major linear BF16", "BF16"),
        ("Row major linear FP8", "FP8"),
        ("Row major linear Int32", None),
        ("Bool", None),
        ("N/A due to dynamic shapes", None),
    ],
)
def test_tensor_formats(fmt, want):
    assert lr.tensor_precision(fmt) == want


def test_names_only_layer_info_is_refused():
    with pytest.raises(CalibkitError, match="profilingVerbosity=detailed"):
        lr.report({"Layers": ["conv1 + relu1", "fc"], "Bindings": ["x", "y"]})
    with pytest.raises(CalibkitError, match='no "Layers" list'):
        lr.report({"layers": []})


def test_inspect_reads_trtexec_layer_info(cli):
    p = cli("inspect", FIXTURE)
    assert "8 ONNX nodes in 7 layers" in p.stdout and "3 layers from no ONNX node" in p.stdout
    row = next(line for line in p.stdout.splitlines() if line.startswith("fc "))
    assert "FP16" in row


def test_print_trtexec_exports_layer_info(cli, tmp_path, conv_model, calibrated):
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
        "--shapes",
        "x:1x3x8x8/4x3x8x8/8x3x8x8",
    )
    args = shlex.split(p.stdout.strip())
    assert "--profilingVerbosity=detailed" in args and f"--exportLayerInfo={tmp_path / 'e.layers.json'}" in args
    assert "calibkit inspect" in p.stderr and "by layer name" not in p.stderr
    kept = cli(
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
        "--keep-fp16",
        "fc",
    )
    assert "--layerPrecisions=fc:fp16" in kept.stdout and "by layer name" in kept.stderr  # trtexec's limit is said


@pytest.mark.parametrize("major", [10, 11])
def test_every_build_writes_the_layer_report(monkeypatch, tmp_path, conv_model, calibrated, major):
    from calibkit.trt.build import build

    trt = fake_trt.install(monkeypatch, major)
    spec = BuildSpec(
        Path(conv_model), tmp_path / "e.plan", int8=True, cache=calibrated, shapes=SHAPES, keep_fp16=["fc"]
    )
    res = build(spec)
    raw = json.loads((tmp_path / "e.layers.json").read_text())
    assert [layer["Name"] for layer in raw["Layers"]] == [layer["name"] for layer in trt.world.built]
    rep = json.loads((tmp_path / "e.layer-report.json").read_text())
    assert rep["format"] == lr.FORMAT and res["layer_report"] == tmp_path / "e.layer-report.json"
    assert "FP16" in rep["nodes"]["fc"]["precisions"] and rep["kept"]["fp16"] == ["fc"]
    if major == 10:
        assert rep["nodes"]["conv1"]["precisions"] == ["INT8"] and rep["fallbacks"] == []


def test_validate_candidate_note_carries_the_layer_report(monkeypatch, tmp_path, conv_model, calibrated):
    import numpy as np

    from calibkit.artifacts import trt_cache
    from calibkit.trt import backend, runner

    fake_trt.install(monkeypatch, 10)

    class Runner:
        def __init__(self, engine):
            self.engine = engine

        def run(self, names, feed):
            return [np.zeros((len(feed["x"]), 4), np.float32)]

    monkeypatch.setattr(runner, "EngineRunner", Runner)
    amax = {n: s * 127 for n, s in trt_cache.read(calibrated).scales.items()}
    cand = backend.candidate("trt-int8", onnx.load(str(conv_model)), ["y"], tmp_path, amax, "entropy")
    assert "layer report" in cand.note and "layers:" not in cand.note
    cand.run({"x": np.zeros((4, 3, 8, 8), np.float32)})
    assert "layers: 8 ONNX nodes" in cand.note and (tmp_path / "trt-int8.layer-report.json").is_file()
