"""Q/DQ export on the real corpus models whose form it must handle: Paddle2ONNX Constant weights
(ppocrv4_*), opset 11 (ddddocr_det), attention MatMuls (minilm_l6, ppocrv4_rec), external data
(mtcnn_onet), float16 (mtcnn_rnet_fp16), every Conv/Gemm inside If branches on the sample rate
(silero_vad*, oww_silero_vad: the branch calibrated is quantized, the other stays float). The
model must pass onnx.checker, load and run in ORT."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helpers"))
from conftest import corpus, corpus_files  # noqa: E402
from qdq_models import check_trt_placement  # noqa: E402
from test_corpus import _feed  # noqa: E402

from calibkit.artifacts import scales as scales_io  # noqa: E402
from calibkit.calibration import calibrate  # noqa: E402
from calibkit.qdq.bodies import body_activation_count  # noqa: E402
from calibkit.qdq.export import activation_qdq, export_qdq  # noqa: E402

CASES = {
    "ppocrv4_det": {"note": "Constant nodes"},
    "ppocrv4_rec": {"note": "Constant nodes", "act_matmul": 4},
    "ddddocr_det": {"note": "opset 11 converted to 13"},
    "minilm_l6": {"act_matmul": 12},
    "mtcnn_onet": {"external": True},
    "mtcnn_rnet_fp16": {"note": "float16"},
    # If on sr: one branch per sample rate, calibrated at 16 kHz; (ops quantized, ops left float)
    "silero_vad": {
        "note": "6 ops inside If branches quantized",
        "float": "6 ops inside If branches left in float: not calibrated",
    },
    "silero_vad_op18_ifless": {
        "note": "8 ops inside If branches quantized",
        "float": "8 ops inside If branches left in float: not calibrated",
    },
    "oww_silero_vad": {
        "note": "18 ops inside If branches quantized",
        "float": "18 ops inside If branches left in float: not calibrated",
    },
}


@pytest.mark.parametrize("name", list(CASES))  # only the models with a form of interest (the rest: test_corpus)
def test_qdq_export_forms(name, tmp_path):
    model, calib, val = corpus_files(corpus.by_name(name))
    case = CASES[name]
    calibrate(model, calib, output_dir=tmp_path / "cal", device="cpu")
    table = scales_io.read(tmp_path / "cal" / "scales.json")
    notes: list[str] = []
    out = export_qdq(model, table.amax(), tmp_path / "m.qdq.onnx", notes=notes)
    if "note" in case:
        assert any(case["note"] in n for n in notes), notes
    if "float" in case:
        assert case["float"] in notes, notes
    assert bool(list(tmp_path.glob("m.qdq.onnx.*.data"))) == case.get("external", False)
    onnx.checker.check_model(str(out), full_check="float" in case)  # full: strict shape inference through the branches
    q = onnx.load(str(out))
    counts = check_trt_placement(
        onnx.load(str(model)),
        q,
        {t: v["scale"] for t, v in table.tensors.items()} if "float16" not in case.get("note", "") else _half(table),
    )
    if "act_matmul" in case:
        assert counts["act_matmul"] >= case["act_matmul"]
    assert activation_qdq(q) or ("float" in case and body_activation_count(q))
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    feed = _feed(sess, val)
    outs = sess.run(None, feed)
    assert all(np.all(np.isfinite(o.astype(np.float64))) for o in outs if np.issubdtype(o.dtype, np.floating))
    if "float" in case:  # INT8 inside the branch: close to FP32, not equal
        ref = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, feed)
        assert any(not np.array_equal(r, o) for r, o in zip(ref, outs))
        for r, o in zip(ref, outs):
            assert float(np.dot(r.ravel(), o.ravel()) / (np.linalg.norm(r) * np.linalg.norm(o) + 1e-30)) > 0.95


def _half(table) -> dict[str, float]:
    return {t: float(np.float16(v["scale"])) for t, v in table.tensors.items()}
