"""sensitivity + fallback through the real CLI on a model made by others (PP-OCR's text
orientation classifier, Paddle2ONNX: Constant-node weights, MobileNetV3, Hardswish)."""

from __future__ import annotations

import json

import pytest
from conftest import corpus, corpus_files


@pytest.fixture
def cls_model(tmp_path, monkeypatch):
    monkeypatch.setenv("CALIBKIT_CACHE", str(tmp_path / "cache"))
    return corpus_files(corpus.by_name("ppocr_cls"))


def test_fallback_on_a_paddle_classifier(cls_model, corpus_cli, tmp_path):
    model, calib, val = cls_model
    r = corpus_cli("calibrate", model, "--data", calib, "-o", tmp_path / "cal", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    scales = tmp_path / "cal" / "scales.json"
    r = corpus_cli("sensitivity", model, "--scales", scales, "--data", val, "-o", tmp_path / "sens", "--workers", "2")
    assert r.returncode == 0, r.stderr
    sens = json.loads((tmp_path / "sens" / "sensitivity.json").read_text())
    assert sens["units"] >= 20 and len(sens["layers"]) == sens["units"]
    target = min(0.999, (1 + sens["all_int8"]["min_cosine"]) / 2)  # halfway from all-INT8 to FP32
    r = corpus_cli(
        "fallback",
        model,
        "--scales",
        scales,
        "--data",
        val,
        "-o",
        tmp_path / "fb",
        "--min-cosine",
        f"{target:.6f}",
        "--workers",
        "2",
    )
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads((tmp_path / "fb" / "fallback.json").read_text())
    assert doc["pass"] and 0 < len(doc["search"]["kept"]) < doc["units"]
    assert doc["verification"]["after"]["min_cosine"] >= target > doc["verification"]["before"]["min_cosine"]
    assert doc["evaluations"]["reused_from_earlier_runs"] >= 2 * doc["units"]
    kept = (tmp_path / "fb" / "exclude-nodes.txt").read_text().split()
    r = corpus_cli(
        "export-qdq",
        model,
        "--scales",
        scales,
        "--exclude-list",
        tmp_path / "fb" / "exclude-nodes.txt",
        "-o",
        tmp_path / "q.onnx",
    )
    assert r.returncode == 0, r.stderr
    assert kept == doc["exclude_nodes"]
