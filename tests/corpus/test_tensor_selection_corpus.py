"""calibrate --tensors on the real corpus models: which tensors each model drops (inside TensorRT's
fused layers: calibkit/qdq/fusion.py), and that every input the Q/DQ placement quantizes still
has its scale, so export-qdq works from the default scales and from --tensors qdq.

DROPPED: {model: (float tensors, dropped by trt, kept by qdq)} on the model as calibrated (If
branches on constant inputs inlined). A change to the fusion rule or the placement shows here.
"""

from __future__ import annotations

import json

import onnx
import pytest

from calibkit.calibration import calibrate
from calibkit.qdq import fusion
from calibkit.qdq.export import activation_qdq, export_qdq

DROPPED = {
    "ppocrv4_det": (331, 228, 69),
    "ppocrv4_rec": (404, 264, 55),
    "ppocr_cls": (253, 114, 54),  # 72 before 2026-12-07: 18 bias-through-Reshape inputs took scales
    "silero_vad_16k_sequence": (32, 5, 6),
    "ddddocr_common": (64, 22, 22),
    "ddddocr_det": (280, 154, 67),
    "nudenet_320n": (296, 114, 59),
    "oww_melspectrogram": (21, 1, 2),
    "oww_embedding": (69, 21, 20),
    "oww_hey_mycroft": (31, 2, 1),
    "minilm_l6": (255, 36, 48),
    "mtcnn_onet": (20, 5, 6),
    "mtcnn_rnet_fp16": (16, 4, 5),
}


def _run(model, calib, out, tensors):
    calibrate(model, calib, output_dir=out, device="cpu", tensors=tensors)
    return json.loads((out / "scales.json").read_text())


def test_dropped_tensors_and_qdq_inputs_keep_their_scales(corpus_model, model_files, tmp_path):
    if corpus_model["name"] not in DROPPED:
        pytest.skip("no weighted layer in the main graph (If-branch models): --tensors trt drops nothing")
    model, calib, _ = model_files
    total, dropped, qdq_kept = DROPPED[corpus_model["name"]]
    trt = _run(model, calib, tmp_path / "trt", "trt")
    assert trt["tensor_selection"] == "trt"
    assert (len(trt["tensors"]), len(trt["skipped"])) == (total - dropped, dropped), sorted(trt["skipped"])[:20]
    assert not set(trt["tensors"]) & set(trt["skipped"])
    assert all(why.startswith("inside the fused ") for why in trt["skipped"].values())
    qdq = _run(model, calib, tmp_path / "qdq", "qdq")
    assert (len(qdq["tensors"]), len(qdq["skipped"])) == (qdq_kept, total - qdq_kept)
    assert set(qdq["tensors"]) <= set(trt["tensors"])  # every Q/DQ input is a fused layer's boundary
    for name, table in (("trt", trt), ("qdq", qdq)):
        amax = {t: v["amax"] for t, v in table["tensors"].items()}
        out = export_qdq(model, amax, tmp_path / f"{name}.qdq.onnx")
        quantized = set(activation_qdq(onnx.load(str(out), load_external_data=False)))
        assert quantized <= set(amax), sorted(quantized - set(amax))[:10]
        assert quantized, "the Q/DQ model quantizes no activation"


def test_fusion_rule_never_drops_a_qdq_input(corpus_model, model_files):
    from calibkit.graph.model import calibration_tensors, load

    proto = load(model_files[0], keep_external=True)
    names = calibration_tensors(proto, everything=True)
    kept, dropped = fusion.select(proto, names, "trt")
    assert not set(fusion.qdq_inputs(proto)) & set(dropped)  # the rule never drops a Q/DQ input
    # ... nor one the trt-fused placement reads (calibkit/qdq/rules.py)
    from calibkit.graph.forms import fold_constant_nodes
    from calibkit.qdq import rules
    from calibkit.qdq.export import name_nodes

    named = name_nodes(fold_constant_nodes(proto)[0])
    assert not set(rules.needed(named, rules.decide(named))) & set(dropped)
    assert set(kept) | set(dropped) == set(names) and not set(kept) & set(dropped)
