"""calibkit drift: the same data shows no drift and passes any --max-clip; data shifted past the
calibrated range is flagged (exit 3); its outputs are one set whose histograms merge with the
calibration's. Real CLI, real ONNX Runtime sessions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from calibkit.artifacts import histograms as store
from calibkit.checks.drift import drift, ks_distance
from calibkit.numerics.histogram import TensorHistogram


@pytest.fixture
def calibrated(cli, conv_model, conv_data, tmp_path):
    cli("calibrate", conv_model, "--data", conv_data, "-o", tmp_path / "cal")
    return conv_model, conv_data, tmp_path / "cal"


def test_same_data_no_drift(cli, calibrated, tmp_path):
    model, data, cal = calibrated
    r = cli(
        "drift", model, "--histograms", cal / "histograms.npz", "--data", data, "--max-clip", "0", "-o", tmp_path / "d"
    )
    assert "PASS" in r.stdout
    doc = json.loads((tmp_path / "d" / "drift.json").read_text())
    assert doc["max_clip"] == {"limit": 0.0, "due": [], "passed": True} and not doc["missing"]
    for t in doc["tensors"]:
        assert t["clipped_new"] == t["clipped_calib"] and t["excess_clipped"] == 0.0
        assert t["distance"] == 0.0 and t["mse_ratio"] == 1.0 and t["amax"] == t["amax_fresh"]
    # the new data's histograms are the calibration's, byte for byte in their counts
    new, old = store.load(tmp_path / "d" / "histograms.npz"), store.load(cal / "histograms.npz")
    assert set(new.tensors) == set(old.tensors)
    assert all(np.array_equal(new.tensors[n].counts, old.tensors[n].counts) for n in old.tensors)


def test_shifted_data_is_flagged(cli, calibrated, tmp_path):
    model, data, cal = calibrated
    with np.load(data) as z:
        x = z["x"]
    np.savez(tmp_path / "bright.npz", x=(x * 3.0 + 1.0).astype(np.float32))  # exposure/gain changed in production
    r = cli(
        "drift",
        model,
        "--histograms",
        cal / "histograms.npz",
        "--data",
        tmp_path / "bright.npz",
        "--max-clip",
        "0.01",
        "-o",
        tmp_path / "d",
        expect=3,
    )
    assert "RECALIBRATE (--max-clip 0.01)" in " ".join(r.stdout.split()) and "calibkit: drift: RECALIBRATE" in r.stderr
    doc = json.loads((tmp_path / "d" / "drift.json").read_text())
    assert doc["max_clip"]["passed"] is False and "x" in doc["max_clip"]["due"]
    row = next(t for t in doc["tensors"] if t["tensor"] == "x")
    # the input itself: |3x + 1| past the calibrated amax of |x|
    assert row["clipped_new"] > 0.2 and row["distance"] > 0.3 and row["mse_ratio"] > 10
    assert doc["tensors"][0]["excess_clipped"] == max(t["excess_clipped"] for t in doc["tensors"])
    # the new histograms merge with the calibration's (one model, disjoint data)
    cli("merge", cal / "histograms.npz", tmp_path / "d" / "histograms.npz", "-o", tmp_path / "all.npz")


def test_python_api_and_the_scales_file_give_the_same_rows(calibrated, tmp_path):
    model, data, cal = calibrated
    a = drift(model, cal / "histograms.npz", data, device="cpu")
    b = drift(model, cal / "histograms.npz", data, scales=cal / "scales.json", device="cpu")
    assert [r.to_dict() for r in a.rows] == [r.to_dict() for r in b.rows]
    assert a.passed() and not a.outputs  # no output_dir: nothing written


def test_ks_distance_exact_on_folded_bins():
    a, b = TensorHistogram(), TensorHistogram()
    a.update(np.array([0.1, 0.2, 0.3, 0.4], np.float32))
    b.update(np.array([0.1, 0.2, 3.0, 3.5], np.float32))  # a wider range: a's bins fold into b's
    assert ks_distance(a, a) == 0.0 and ks_distance(a, b) == pytest.approx(0.5)
    assert np.isnan(ks_distance(a, TensorHistogram()))


def test_bad_input_is_one_line(cli, calibrated, tmp_path, two_input_model=None):
    model, data, cal = calibrated
    for args, said in (
        (["--histograms", tmp_path / "none.npz", "--data", data], "not found"),
        (["--histograms", cal / "histograms.npz", "--data", data, "--max-clip", "2"], "--max-clip"),
        (["--histograms", cal / "histograms.npz", "--data", tmp_path / "none.npz"], "not found"),
    ):
        r = cli("drift", model, *args, expect=1)
        assert r.stderr.startswith("calibkit: error: ") and said in r.stderr and "Traceback" not in r.stderr
    r = cli("drift", model, "--histograms", cal / "histograms.npz", expect=2)
    assert "give --data" in r.stderr


def test_the_calibrations_batch_axes_are_used_when_none_is_given(tmp_path):
    import feed_models as fm

    from calibkit import calibrate
    from calibkit.data.options import FeedOptions

    model = fm.relu_net(tmp_path / "r.onnx", ["A", "B"])  # both dims dynamic: axis 0 by default
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).normal(size=(3, 10)).astype(np.float32))
    calibrate(model, tmp_path / "d.npz", output_dir=tmp_path / "cal", feed=FeedOptions({"x": 1}), device="cpu")
    res = drift(model, tmp_path / "cal" / "histograms.npz", tmp_path / "d.npz", device="cpu")
    assert res.calib_samples == res.new_samples == 10  # samples on axis 1, as calibrated
    assert all(r.excess == 0 and r.distance == 0 for r in res.rows)
