"""diff, drift and calibrate --shards on a model made by others (PP-OCR's text orientation
classifier, Paddle2ONNX: Constant-node weights, MobileNetV3, Hardswish), through the real CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import corpus, corpus_files


@pytest.fixture
def cls(tmp_path, corpus_cli):
    model, calib, val = corpus_files(corpus.by_name("ppocr_cls"))
    r = corpus_cli("calibrate", model, "--data", calib, "-o", tmp_path / "cal", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    return model, calib, val


def test_diff_between_builds(cls, corpus_cli, tmp_path):
    model, calib, val = cls
    cal = tmp_path / "cal"
    r = corpus_cli("calibrate", model, "--data", calib, "-o", tmp_path / "again", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    r = corpus_cli("diff", cal / "scales.json", tmp_path / "again" / "scales.json", "--max-change", "0")
    assert r.returncode == 0 and "PASS" in r.stdout, r.stdout + r.stderr  # the same build: nothing moved
    stem = model.stem
    r = corpus_cli("diff", cal / f"{stem}.cache", cal / "histograms.npz", "--max-change", "1e-6")
    assert r.returncode == 0, r.stdout + r.stderr  # the cache and the histograms it came from agree
    # another data set (the validation split) moves the scales: the CI check catches it
    r = corpus_cli("calibrate", model, "--data", val, "-o", tmp_path / "other", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    r = corpus_cli(
        "diff",
        cal / "scales.json",
        tmp_path / "other" / "scales.json",
        "--max-change",
        "0.01",
        "--json",
        tmp_path / "d.json",
        "--report",
        tmp_path / "d.html",
    )
    assert r.returncode == 3, r.stdout + r.stderr
    doc = json.loads((tmp_path / "d.json").read_text())
    assert doc["max_change"]["over"] and not doc["added"] and not doc["removed"]
    assert len(doc["tensors"]) == doc["a"]["tensors"] > 20
    assert "data:image/png;base64," in (tmp_path / "d.html").read_text()


def test_drift_same_and_shifted_data(cls, corpus_cli, tmp_path):
    model, calib, _ = cls
    hist = tmp_path / "cal" / "histograms.npz"
    r = corpus_cli(
        "drift",
        model,
        "--histograms",
        hist,
        "--data",
        calib,
        "--max-clip",
        "0",
        "-o",
        tmp_path / "same",
        "--device",
        "cpu",
    )
    assert r.returncode == 0 and "PASS" in r.stdout, r.stdout + r.stderr
    same = json.loads((tmp_path / "same" / "drift.json").read_text())
    assert all(t["excess_clipped"] == 0 and t["distance"] == 0 for t in same["tensors"])
    # production images twice as contrasty (values leave [-1, 1]): recalibration is due
    with np.load(calib) as z:
        np.savez(tmp_path / "contrast.npz", x=np.clip(z["x"] * 2.0, -2, 2).astype(np.float32))
    r = corpus_cli(
        "drift",
        model,
        "--histograms",
        hist,
        "--data",
        tmp_path / "contrast.npz",
        "--max-clip",
        "0.01",
        "-o",
        tmp_path / "shifted",
        "--device",
        "cpu",
    )
    assert r.returncode == 3 and "RECALIBRATE" in r.stdout, r.stdout + r.stderr
    doc = json.loads((tmp_path / "shifted" / "drift.json").read_text())
    assert "x" in doc["max_clip"]["due"]
    x = next(t for t in doc["tensors"] if t["tensor"] == "x")
    assert x["clipped_new"] > 0.2 and x["mse_ratio"] > 5


def test_shards_merge_to_the_plain_calibration(cls, corpus_cli, tmp_path):
    model, calib, _ = cls
    r = corpus_cli("calibrate", model, "--data", calib, "--shards", "4", "-o", tmp_path / "s", "--device", "cpu")
    doc = json.loads((tmp_path / "s" / "sufficiency.json").read_text())
    assert r.returncode == (0 if doc["enough"] else 3), r.stdout + r.stderr
    assert doc["samples"] == [4, 4, 4, 4] and len(doc["tensors"]) > 20
    for name in ("histograms.npz", "scales.json", f"{model.stem}.cache"):
        assert (tmp_path / "s" / name).read_bytes() == (tmp_path / "cal" / name).read_bytes(), name
    # 16 images in 4 parts of 4: some amax moves by more than 5% (see tests/unit/cli/test_shards.py)
    assert doc["enough"] is False and doc["tensors"][0]["spread"] > 0.05
