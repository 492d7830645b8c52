"""FP8 E4M3FN: the grid (against ml_dtypes' cast), and the Q/DQ export on ORT CPU."""

from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, numpy_helper

from calibkit.artifacts import scales as scales_io
from calibkit.calibration import calibrate
from calibkit.errors import CalibkitError
from calibkit.graph.model import load
from calibkit.numerics.formats import FP8, INT8, number_format
from calibkit.qdq.export import activation_qdq, export_qdq
from calibkit.sessions import session


def test_fp8_levels_match_the_e4m3fn_cast():
    rng = np.random.default_rng(0)
    x = np.concatenate(
        [rng.normal(0, 100, 20000), rng.normal(0, 0.01, 20000), rng.normal(0, 1e-4, 2000)]
        + [[448.0, 449.0, 464.0, 465.0, 1e6, -1e6, 0.0, 2.0**-10, 3 * 2.0**-11, 2.0**-9 * 1.5]]
    )
    expect = np.clip(x, -448, 448).astype(ml_dtypes.float8_e4m3fn).astype(np.float64)
    np.testing.assert_array_equal(FP8.levels(x), expect)
    assert FP8.levels(np.array([1000.0]))[0] == 448.0  # saturating, never NaN


def test_formats_and_scales():
    assert number_format("int8") is INT8 and number_format("fp8") is FP8
    with pytest.raises(ValueError, match="int8, fp8"):
        number_format("fp4")
    assert FP8.scale(448.0) == 1.0 and FP8.onnx_type == TensorProto.FLOAT8E4M3FN
    assert np.float32(FP8.scale(3.0)) == np.float32(3.0) / np.float32(448.0)
    np.testing.assert_array_equal(INT8.fake_quant([1.0, 0.5, -3.0], 0.01), [1.0, 0.5, -1.27])


@pytest.fixture
def calibrated(conv_model, conv_data, tmp_path):
    calibrate(conv_model, conv_data, output_dir=tmp_path / "cal")
    return load(conv_model), scales_io.read(tmp_path / "cal" / "scales.json")


def test_fp8_export_scales_weights_and_runs(calibrated, tmp_path):
    model, table = calibrated
    path = export_qdq(model, table.amax(), tmp_path / "m.fp8.onnx", precision="fp8")
    q = onnx.load(str(path))
    onnx.checker.check_model(q)
    assert max(o.version for o in q.opset_import if o.domain in ("", "ai.onnx")) >= 19
    inits = {i.name: i for i in q.graph.initializer}
    acts = activation_qdq(q)
    assert set(acts) == {"x", "r1", "flat"}  # same placement as INT8
    for tensor, (_, scale) in acts.items():
        assert np.float32(scale) == np.float32(table.amax()[tensor]) / np.float32(448)
    for n in q.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zp = inits[n.input[2]]
            assert zp.data_type == TensorProto.FLOAT8E4M3FN and not numpy_helper.to_array(zp).astype(np.float32).any()
    w1 = numpy_helper.to_array({i.name: i for i in model.graph.initializer}["w1"])
    ws = numpy_helper.to_array(inits["w1_scale"])
    np.testing.assert_array_equal(ws, (np.abs(w1).reshape(8, -1).max(1) / np.float32(448)).astype(np.float32))
    wq = inits["w1_quantized"]
    assert wq.data_type == TensorProto.FLOAT8E4M3FN
    got_w = numpy_helper.to_array(wq).astype(np.float64)
    np.testing.assert_array_equal(got_w, FP8.levels(w1 / ws[:, None, None, None].astype(np.float64)))
    assert np.abs(got_w).max() == 448.0  # each channel's amax maps to the top of the grid
    x = np.load(tmp_path / "calib.npz")["x"][:8]
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = session(path.read_bytes(), device="cpu", exact_qdq=True).run(None, {"x": x})[0]
    cos = float((ref.ravel() @ got.ravel()) / (np.linalg.norm(ref) * np.linalg.norm(got)))
    assert cos > 0.999


def test_fp8_refuses_ort_placement(calibrated, tmp_path):
    model, table = calibrated
    with pytest.raises(CalibkitError, match="--placement trt"):
        export_qdq(model, table.amax(), tmp_path / "m.onnx", placement="ort", precision="fp8")
    with pytest.raises(CalibkitError, match="precision 'fp4'"):
        export_qdq(model, table.amax(), tmp_path / "m.onnx", precision="fp4")


def test_export_qdq_cli_precision(cli, conv_model, conv_data, tmp_path):
    calibrate(conv_model, conv_data, output_dir=tmp_path / "cal")
    out = tmp_path / "m.fp8.onnx"
    r = cli("export-qdq", conv_model, "--scales", tmp_path / "cal" / "scales.json", "-o", out, "--precision", "fp8")
    assert "weights per-channel FP8" in r.stdout and "trtexec --onnx=" in r.stdout
    q = onnx.load(str(out))
    assert {i.data_type for i in q.graph.initializer if i.name.endswith("_zero_point")} == {TensorProto.FLOAT8E4M3FN}


def test_validate_backend_ort_fp8(cli, conv_model, conv_data, tmp_path):
    calibrate(conv_model, conv_data, output_dir=tmp_path / "cal")
    r = cli(
        "validate", conv_model, "--scales", tmp_path / "cal" / "scales.json", "--data", conv_data,
        "--backends", "ort-int8,ort-fp8", "--report", tmp_path / "r.html",
    )  # fmt: skip
    assert "ort-fp8 (" in r.stdout and "FP8), dequantize->FP32" in r.stdout
    doc = json.loads((tmp_path / "r.results.json").read_text())
    by = {c["backend"]: c for c in doc["candidates"]}
    assert by["ort-fp8"]["method"] == by["ort-int8"]["method"]
    assert min(o["cosine"] for o in by["ort-fp8"]["outputs"].values()) > 0.999


def test_compare_precisions_and_placements_side_by_side(cli, conv_model, conv_data, tmp_path):
    calibrate(conv_model, conv_data, output_dir=tmp_path / "cal")
    cli(
        "compare", conv_model, "--histograms", tmp_path / "cal" / "histograms.npz", "--data", conv_data,
        "--methods", "minmax", "--precision", "int8,fp8", "--placement", "trt,trt-fused",
        "--report", tmp_path / "c.html", "--export-qdq", "-o", tmp_path / "m",
    )  # fmt: skip
    doc = json.loads((tmp_path / "c.results.json").read_text())
    labels = sorted(c["label"] for c in doc["candidates"][1:])
    assert labels == [
        "ort-fp8 (minmax)",
        "ort-fp8 (minmax) [trt-fused]",
        "ort-int8 (minmax)",
        "ort-int8 (minmax) [trt-fused]",
    ]
    # TensorRT's fused placement leaves this small net's convolutions in float (qdq/rules.py):
    # those rows quantize nothing, and their notes say so
    notes = {c["label"]: c.get("note", "") for c in doc["candidates"][1:]}
    assert all(("NOTHING IS QUANTIZED" in n) == ("trt-fused" in k) for k, n in notes.items()), notes
    written = sorted(p.name for p in (tmp_path / "m" / "minmax").glob("*.qdq.onnx"))
    assert written == [
        "conv.qdq.onnx",
        "conv.trt-fused.fp8.qdq.onnx",
        "conv.trt-fused.int8.qdq.onnx",
        "conv.trt.fp8.qdq.onnx",
    ]
    fp8 = onnx.load(str(tmp_path / "m" / "minmax" / "conv.trt.fp8.qdq.onnx"))
    assert any(i.data_type == TensorProto.FLOAT8E4M3FN for i in fp8.graph.initializer)


def test_quantize_precision_fp8(cli, tmp_path):
    from recovery_models import chain

    model = chain(tmp_path / "m.onnx")
    rng = np.random.default_rng(3)
    np.savez(tmp_path / "cal.npz", x=rng.normal(0, 1, (48, 4, 8, 8)).astype(np.float32))
    np.savez(tmp_path / "val.npz", x=rng.normal(0, 1, (32, 4, 8, 8)).astype(np.float32))
    r = cli(
        "quantize", model, "--data", tmp_path / "cal.npz", "--val", tmp_path / "val.npz",
        "--min-cosine", "0.99", "--precision", "fp8", "-o", "q",
    )  # fmt: skip
    assert "bias correction and weight rounding skipped" in r.stdout + r.stderr
    assert " INT8" not in r.stdout and "compute layers in FP8" in r.stdout  # the layers are FP8, and said so
    doc = json.loads((tmp_path / "q" / "quantize.json").read_text())
    assert "compute layers in FP8" in doc["verdict"]
    assert "compute layers in FP8" in (tmp_path / "q" / "report.html").read_text()
    assert doc["precision"] == "fp8" and doc["recovery"]["layers"] == {}
    assert not any(s["step"] == "recovery" for s in doc["stages"])
    q = onnx.load(str(tmp_path / "q" / "m.qdq.onnx"))
    assert any(i.data_type == TensorProto.FLOAT8E4M3FN for i in q.graph.initializer)
    x = np.load(tmp_path / "val.npz")["x"]
    ref = session(onnx.load(str(model))).run(None, {"x": x})[0].ravel()
    got = session(q, exact_qdq=True).run(None, {"x": x})[0].ravel()
    cos = float(ref @ got / np.linalg.norm(ref) / np.linalg.norm(got))
    kept = [s for s in doc["stages"] if s.get("kept", True)][-1]
    assert abs(cos - kept["min_cosine"]) < 1e-5  # every stage was scored in FP8, as published


def _heavy_tail_hist():
    from calibkit.numerics.histogram import TensorHistogram

    rng = np.random.default_rng(0)
    h = TensorHistogram()
    h.update(np.concatenate([rng.standard_normal(100000), rng.laplace(0, 4, 300), [60.0]]).astype(np.float32))
    return h


def test_mse_and_auto_on_the_fp8_grid():
    from calibkit import methods
    from calibkit.methods import auto, mse

    h = _heavy_tail_hist()
    name, cfg = methods.parse_spec("mse:fp8=1")
    assert methods.spec_of(name, cfg) == "mse:fp8=1"
    # defaults keep their recorded params (scales.json bytes of existing methods unchanged)
    assert methods.config_params(methods.make_config("mse")) == {"start_bin": 128}
    assert methods.config_params(methods.make_config("auto")) == {}
    # the FP8 pick is the brute-force argmin of the FP8 error over the candidate bin centres
    k = mse.select_bin_fp8(h, cfg)
    nz = np.flatnonzero(h.counts)
    c, n = (nz + 0.5) * h.bin_width, h.counts[nz].astype(np.float64)

    def err(i):
        s = float(np.float32((i + 0.5) * h.bin_width) / np.float32(448))
        q = np.clip(c / s, -448, 448).astype(ml_dtypes.float8_e4m3fn).astype(np.float64) * s
        return float(((q - c) ** 2 * n).sum())

    brute = min(range(cfg.start_bin, 2048, 7), key=err)
    assert err(k) <= err(brute)
    # FP8's relative precision makes clipping the tail cost more than INT8's uniform steps do
    int8_amax = methods.get("mse").amax(h, methods.make_config("mse"))
    fp8_amax = methods.get("mse").amax(h, cfg)
    assert fp8_amax > int8_amax
    a8, detail = auto.choose(h, methods.make_config("auto", fp8=1))
    assert detail["criterion"] == "expected_mse_fp8"
    assert detail["candidates"]["minmax"]["expected_mse"] == pytest.approx(
        float(auto.expected_mse(h, [detail["candidates"]["minmax"]["amax"]], FP8)[0])
    )
    _, d8 = auto.choose(h, methods.make_config("auto"))
    assert d8["criterion"] == "expected_mse"


def test_fp8_export_of_external_data_keeps_one_data_file_of_fp8_weights(tmp_path):
    """A model with external data: the FP8 export's data file holds exactly the tensors its
    graph points to (the FP8 weights), none of the INT8 ones the quantizer wrote first."""
    from onnx import helper

    from calibkit.qdq.files import external_locations

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(0, 0.05, (256, 256)).astype(np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 256])],
        [w],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    src = tmp_path / "src" / "big.onnx"
    src.parent.mkdir()
    onnx.save(m, str(src), save_as_external_data=True, location="big.onnx.data", size_threshold=0)
    x = rng.normal(0, 1, (8, 256)).astype(np.float32)
    out = tmp_path / "out" / "big.fp8.onnx"
    export_qdq(src, {"x": float(np.abs(x).max())}, out, precision="fp8")
    files = sorted(p.name for p in out.parent.iterdir() if p.is_file())
    q = onnx.load(str(out), load_external_data=False)
    locs = external_locations(q)
    assert len(locs) == 1 and files == sorted(["big.fp8.onnx", locs[0]]), files
    used = 0
    for t in q.graph.initializer:
        if t.data_location == TensorProto.EXTERNAL:
            used += int(next(e.value for e in t.external_data if e.key == "length"))
    assert used == (out.parent / locs[0]).stat().st_size  # no stale bytes
    assert {t.name: t.data_type for t in q.graph.initializer}["w_quantized"] == TensorProto.FLOAT8E4M3FN
    ref = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = session(onnx.load(str(out)), device="cpu", exact_qdq=True).run(None, {"x": x})[0]
    assert float(ref.ravel() @ got.ravel() / np.linalg.norm(ref) / np.linalg.norm(got)) > 0.995
