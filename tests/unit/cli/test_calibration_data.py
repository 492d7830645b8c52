"""`calibkit calibrate MODEL` with no --data reads ./calibration_data/<stem>/ (or the folder
itself when it holds one set), uses the set's preprocess.json, and says which it took."""

from __future__ import annotations

import shutil

import numpy as np

from calibkit import demo
from calibkit.artifacts import histograms, scales


def test_model_stem_folder_with_its_preprocess(cli, tmp_path):
    shutil.copytree(demo.CALIB, tmp_path / "calibration_data" / "digits_cnn")
    shutil.copy(demo.MODEL, tmp_path / "digits_cnn.onnx")
    assert (tmp_path / "calibration_data" / "digits_cnn" / "preprocess.json").is_file()
    r = cli("calibrate", "digits_cnn.onnx", "-o", "out")
    assert (
        "no --data: using the set named after the model, calibration_data/digits_cnn, with its preprocess.json"
        in r.stderr
    )
    hs = histograms.load(tmp_path / "out" / "histograms.npz")
    assert hs.samples == 300 and hs.meta["preprocess"]["channels"] == "L"
    # the same as naming the data and preprocessing explicitly
    cli("calibrate", "digits_cnn.onnx", "--data", demo.CALIB, "--preprocess", demo.PREPROCESS, "-o", "explicit")
    got, want = (scales.read(tmp_path / d / "scales.json") for d in ("out", "explicit"))
    assert got.tensors == want.tensors and got.meta["data"]["fingerprint"] == want.meta["data"]["fingerprint"]


def test_one_set_in_the_folder_itself(cli, conv_model, tmp_path):
    (tmp_path / "calibration_data").mkdir()
    np.savez(
        tmp_path / "calibration_data" / "set.npz",
        x=np.random.default_rng(0).normal(size=(8, 3, 8, 8)).astype(np.float32),
    )
    r = cli("calibrate", conv_model, "-o", "out")
    assert "calibration_data, which holds one set" in r.stderr
    assert histograms.load(tmp_path / "out" / "histograms.npz").samples == 8


def test_missing_or_ambiguous_is_one_line_naming_the_folder(cli, conv_model, tmp_path):
    r = cli("calibrate", conv_model, expect=1)
    assert "no --data given and there is no ./calibration_data/ folder" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "calibration_data" / "other").mkdir(parents=True)
    (tmp_path / "calibration_data" / "third").mkdir()
    r = cli("calibrate", conv_model, expect=1)
    assert "has no set for model 'conv' (it holds: other, third)" in r.stderr
    assert "calibration_data/conv/" in r.stderr


def test_find_prefers_the_models_own_set(tmp_path):
    from calibkit.data import sets

    root = tmp_path / "calibration_data"
    (root / "other").mkdir(parents=True)
    np.save(root / "conv.npy", np.zeros((2, 3), np.float32))
    found = sets.find(tmp_path / "models" / "conv.onnx", root)
    assert found.data == root / "conv.npy" and found.preprocess is None
    (root / "conv").mkdir()
    (root / "conv" / "preprocess.json").write_text("{}")
    found = sets.find("conv.onnx", root)
    assert found.data == root / "conv" and found.preprocess == root / "conv" / "preprocess.json"


def test_a_preprocessing_flag_wins_over_the_sets_file(cli, tmp_path):
    shutil.copytree(demo.CALIB, tmp_path / "calibration_data" / "digits_cnn")
    shutil.copy(demo.MODEL, tmp_path / "digits_cnn.onnx")
    r = cli("calibrate", "digits_cnn.onnx", "--channels", "L", "--scale", "0.5", "-o", "out")
    assert "with its preprocess.json" not in r.stderr and "using the set named after the model" in r.stderr
    assert histograms.load(tmp_path / "out" / "histograms.npz").meta["preprocess"]["scale"] == 0.5
