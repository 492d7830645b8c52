"""Q/DQ export: placement, scales equal calibkit's, runs on ORT CPU (real INT8 for 'ort')."""

from __future__ import annotations

import models
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from calibkit.artifacts import scales as scales_io
from calibkit.calibration import calibrate
from calibkit.errors import CalibkitError
from calibkit.graph.model import load
from calibkit.qdq.export import activation_qdq, export_qdq
from calibkit.sessions import session


@pytest.fixture
def calibrated(conv_model, conv_data, tmp_path):
    calibrate(conv_model, conv_data, output_dir=tmp_path / "cal")
    return load(conv_model), scales_io.read(tmp_path / "cal" / "scales.json")


def _producers(m: onnx.ModelProto) -> dict[str, str]:
    return {o: n.op_type for n in m.graph.node for o in n.output}


def test_trt_placement_scales_and_structure(calibrated, tmp_path):
    model, table = calibrated
    path = export_qdq(model, table.amax(), tmp_path / "m.qdq.onnx")
    q = onnx.load(str(path))
    onnx.checker.check_model(q)
    acts = activation_qdq(q)
    assert set(acts) == {"x", "r1", "flat"}  # the inputs of conv1, conv2 and the Gemm
    for tensor, (_, scale) in acts.items():
        assert np.float32(scale) == np.float32(table.tensors[tensor]["scale"])  # bit-identical
    prod = _producers(q)
    for n in q.graph.node:
        if n.op_type == "QuantizeLinear":
            assert prod.get(n.input[0]) not in ("Conv", "Gemm", "MatMul")  # no output quantization
            zp = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}[n.input[2]]
            assert zp.dtype == np.int8 and not zp.any()  # symmetric INT8
        if n.op_type in ("Conv", "Gemm"):
            assert all(prod.get(i) == "DequantizeLinear" for i in n.input[:2])
    # per-channel weights: scale = max|w| / 127 along the output channel
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    qinits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    w1 = inits["w1"]
    np.testing.assert_allclose(qinits["w1_scale"], np.abs(w1).reshape(8, -1).max(1) / 127, rtol=1e-6)
    # runs on ONNX Runtime's CPU provider, close to FP32
    x = np.load(tmp_path / "calib.npz")["x"][:8]
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = session(path.read_bytes(), device="cpu", exact_qdq=True).run(None, {"x": x})[0]
    assert np.abs(got - ref).max() < 0.1 * np.abs(ref).max()


def test_ort_placement_runs_real_int8_kernels(calibrated, tmp_path):
    model, table = calibrated
    path = export_qdq(model, table.amax(), tmp_path / "m.ort.onnx", placement="ort")
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    so.log_severity_level = 3
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    ops = {n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node}
    assert "QLinearConv" in ops and ({"QGemm", "QLinearMatMul"} & ops)
    # ORT gives a tensor that only feeds a Relu the Relu output's scale (Conv+Relu fuse);
    # every other activation keeps calibkit's scale bit for bit.
    relu_out = {n.input[0]: n.output[0] for n in model.graph.node if n.op_type == "Relu"}
    for tensor, (_, scale) in activation_qdq(onnx.load(str(path))).items():
        name = tensor.removesuffix("_QuantizeLinear_Input")
        expected = table.tensors[relu_out.get(name, name)]["scale"]
        assert np.float32(scale) == np.float32(expected), name


def test_exclusions(calibrated, tmp_path):
    model, table = calibrated
    q = onnx.load(str(export_qdq(model, table.amax(), tmp_path / "a.onnx", exclude_nodes="^conv2$")))
    assert set(activation_qdq(q)) == {"x", "flat"}
    q = onnx.load(str(export_qdq(model, table.amax(), tmp_path / "b.onnx", exclude_op_types=["Gemm"])))
    assert set(activation_qdq(q)) == {"x", "r1"}
    with pytest.raises(CalibkitError, match="matches no node"):
        export_qdq(model, table.amax(), tmp_path / "c.onnx", exclude_nodes="^nothing$")
    with pytest.raises(CalibkitError, match="not a valid regular expression"):
        export_qdq(model, table.amax(), tmp_path / "c.onnx", exclude_nodes="(")
    with pytest.raises(CalibkitError, match="placement"):
        export_qdq(model, table.amax(), tmp_path / "c.onnx", placement="tensorrt")
    assert not (tmp_path / "c.onnx").exists()


def test_export_qdq_cli(cli, conv_model, conv_data, tmp_path):
    cli("calibrate", conv_model, "--data", conv_data, "-o", tmp_path / "cal")
    r = cli("export-qdq", conv_model, "--scales", tmp_path / "cal/scales.json", "-o", tmp_path / "m.qdq.onnx")
    assert "3 quantized activations" in r.stdout
    onnx.checker.check_model(onnx.load(str(tmp_path / "m.qdq.onnx")))
    other = models.conv_net(tmp_path / "other.onnx", seed=9)
    bad = cli("export-qdq", other, "--scales", tmp_path / "cal/scales.json", "-o", tmp_path / "o.onnx", expect=1)
    assert "another model" in bad.stderr and not (tmp_path / "o.onnx").exists()
