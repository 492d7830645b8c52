"""Clip warnings (--warn-clip) and the `auto` method, through the real CLI on a model built here."""

from __future__ import annotations

import json
import math

import models
import numpy as np
import pytest

from calibkit.artifacts import histograms as store
from calibkit.methods import auto
from calibkit.numerics.clipping import saturated_fraction
from calibkit.numerics.histogram import NUM_BINS, TensorHistogram


@pytest.fixture
def tail_case(tmp_path):
    """(model, calibration .npz): tensor 'tail' = 2x, heavy-tailed data."""
    model = models.tail_net(tmp_path / "tail.onnx")
    np.savez(tmp_path / "calib.npz", x=models.heavy_tail(200, seed=1))
    return model, tmp_path / "calib.npz"


def _tensors(path) -> dict:
    return json.loads(path.read_text())["tensors"]


def ref_expected_mse(h: TensorHistogram, amax: float) -> float:
    """Slow reference: every bin's values at the midpoint of [j w, min((j+1) w, max|x|)],
    fake-quantised with the float32 scale the table stores."""
    s = float(np.float32(amax) / np.float32(127.0))
    w, total, err = h.bin_width, 0.0, 0.0
    for j in range(NUM_BINS):
        n = int(h.counts[j])
        if n:
            c = (j * w + min((j + 1) * w, h.amax)) / 2.0
            q = min(max(round(c / s), -127), 127) * s  # round(): half to even, as np.rint
            err += n * (q - c) ** 2
            total += n
    return err / total if total else 0.0


def test_entropy_clip_warning_names_tensor(cli, tail_case, tmp_path):
    model, data = tail_case
    r = cli("calibrate", model, "--data", data, "-o", tmp_path / "ent")
    t = _tensors(tmp_path / "ent/scales.json")
    h = store.load(tmp_path / "ent/histograms.npz").tensors["tail"]
    frac = t["tail"]["clipped"]
    assert frac > 0.01 and frac == saturated_fraction(h, t["tail"]["amax"])
    assert t["tail"]["amax"] < 0.5 * t["tail"]["absmax"]
    line = next(ln for ln in r.stdout.splitlines() if "tensor 'tail'" in ln)
    assert (
        "entropy clips" in line
        and f"{frac:.4%}" in line
        and f"amax {t['tail']['amax']:.5g} vs max |x| {t['tail']['absmax']:.5g}" in line
    )
    assert "--method percentile:99.99 or --method auto" in line
    assert "WARNING" in r.stdout and "calibkit: warning:" in r.stderr and "'tail'" in r.stderr
    meta = json.loads((tmp_path / "ent/scales.json").read_text())["clip_warnings"]
    assert meta["limit"] == 0.001 and meta["tensors"]["tail"] == frac
    assert all(t[n]["clipped"] > 0.001 for n in meta["tensors"]) and all(
        n in meta["tensors"] for n in t if t[n]["clipped"] > 0.001
    )
    # a limit above the clipped fraction: no warning, an empty list in scales.json
    r = cli(
        "calibrate",
        model,
        "--histograms",
        tmp_path / "ent/histograms.npz",
        "--warn-clip",
        str(frac + 0.01),
        "-o",
        tmp_path / "quiet",
    )
    assert "WARNING" not in r.stdout and "warning" not in r.stderr
    quiet = json.loads((tmp_path / "quiet/scales.json").read_text())["clip_warnings"]
    assert quiet["tensors"] == {} or "tail" not in quiet["tensors"]
    r = cli(
        "calibrate",
        model,
        "--histograms",
        tmp_path / "ent/histograms.npz",
        "--warn-clip",
        "2",
        "-o",
        tmp_path / "bad",
        expect=1,
    )
    assert "--warn-clip 2.0" in r.stderr and "[0, 1]" in r.stderr and "Traceback" not in r.stderr
    r = cli("inspect", tmp_path / "ent/scales.json")
    assert "tensor 'tail': entropy clips" in r.stdout
    # validate reads the warnings back from scales.json into its results and report
    np.savez(tmp_path / "val.npz", x=models.heavy_tail(50, seed=4))
    cli(
        "validate",
        model,
        "--scales",
        tmp_path / "ent/scales.json",
        "--data",
        tmp_path / "val.npz",
        "--backends",
        "ort-int8",
        "--report",
        tmp_path / "v.html",
        expect=None,
    )
    doc = json.loads((tmp_path / "v.results.json").read_text())
    assert doc["clip_warnings"]["entropy"]["tensors"][0]["tensor"] in ("tail", "x") and doc["clip_warnings"]["entropy"][
        "count"
    ] == len(meta["tensors"])
    assert "entropy clips" in (tmp_path / "v.html").read_text()


def test_api_returns_clip_warnings(tail_case, tmp_path):
    from calibkit.calibration import calibrate

    model, data = tail_case
    res = calibrate(model, data, output_dir=tmp_path / "api")
    by = {w.tensor: w for w in res.clip_warnings}
    assert by["tail"].clipped == res.table.tensors["tail"]["clipped"] > 0.01 and by["tail"].method == "entropy"
    assert res.warn_clip == 0.001 and [w.clipped for w in res.clip_warnings] == sorted(
        (w.clipped for w in res.clip_warnings), reverse=True
    )
    res = calibrate(model, histograms=tmp_path / "api/histograms.npz", method="auto", output_dir=tmp_path / "api2")
    assert "tail" not in {w.tensor for w in res.clip_warnings}


def test_auto_picks_non_clipping_and_is_least_mse(cli, tail_case, tmp_path):
    model, data = tail_case
    cli("calibrate", model, "--data", data, "-o", tmp_path / "ent")
    hist = tmp_path / "ent/histograms.npz"
    r = cli("calibrate", model, "--histograms", hist, "--method", "auto", "-o", tmp_path / "auto")
    a = _tensors(tmp_path / "auto/scales.json")
    assert a["tail"]["method"] != "entropy" and a["tail"]["clipped"] < 0.001
    assert "tensor 'tail'" not in r.stdout and "auto chose" in r.stdout
    r = cli("inspect", tmp_path / "auto/scales.json", "--limit", "50")
    row = next(ln for ln in r.stdout.splitlines() if ln.startswith("tail "))
    assert row.split()[-1] == a["tail"]["method"] and "auto chose:" in r.stdout
    hs = store.load(hist).tensors
    specs = [spec for spec, _ in auto.candidates()]
    assert specs == ["entropy", "minmax", "mse", "percentile:99.9", "percentile:99.99", "percentile:99.999"]
    single = {}
    for spec in specs:
        cli("calibrate", model, "--histograms", hist, "--method", spec, "-o", tmp_path / methods_dir(spec))
        single[spec] = _tensors(tmp_path / methods_dir(spec) / "scales.json")
    assert single["entropy"]["tail"]["clipped"] > 0.01
    for name, t in a.items():
        ref = ref_expected_mse(hs[name], t["amax"])
        assert math.isclose(t["expected_mse"], ref, rel_tol=1e-9, abs_tol=1e-300)
        for spec in specs:
            other = single[spec][name]
            assert t["expected_mse"] <= other["expected_mse"], (name, spec)
            assert math.isclose(
                other["expected_mse"], ref_expected_mse(hs[name], other["amax"]), rel_tol=1e-9, abs_tol=1e-300
            )
            assert t["candidates"][spec] == {"amax": other["amax"], "expected_mse": other["expected_mse"]}
        chosen = t["method"]
        assert t["amax"] == single[chosen][name]["amax"] and t["expected_mse"] == min(
            c["expected_mse"] for c in t["candidates"].values()
        )
        # ties go to the first in the fixed order
        assert chosen == next(s for s in specs if t["candidates"][s]["expected_mse"] == t["expected_mse"])


def methods_dir(spec: str) -> str:
    return spec.replace(":", "-")


def test_auto_deterministic_across_batch_sizes(cli, tail_case, tmp_path):
    model, data = tail_case
    for b in (7, 64):
        cli("calibrate", model, "--data", data, "--method", "auto", "--batch-size", b, "-o", tmp_path / f"b{b}")
    assert (tmp_path / "b7/scales.json").read_bytes() == (tmp_path / "b64/scales.json").read_bytes()
    cli(
        "calibrate", model, "--histograms", tmp_path / "b7/histograms.npz", "--method", "auto", "-o", tmp_path / "again"
    )
    assert (tmp_path / "again/scales.json").read_bytes() == (tmp_path / "b7/scales.json").read_bytes()


def test_compare_ranks_entropy_percentile_auto(cli, tail_case, tmp_path):
    model, data = tail_case
    cli("calibrate", model, "--data", data, "-o", tmp_path / "cal")
    np.savez(tmp_path / "val.npz", x=models.heavy_tail(100, seed=9))
    r = cli(
        "compare",
        model,
        "--histograms",
        tmp_path / "cal/histograms.npz",
        "--data",
        tmp_path / "val.npz",
        "--methods",
        "entropy,percentile:99.99,auto",
        "--report",
        tmp_path / "cmp.html",
        expect=None,
    )
    assert r.returncode in (0, 3), r.stderr
    doc = json.loads((tmp_path / "cmp.results.json").read_text())
    cands = {c["method"]: c for c in doc["candidates"][1:]}
    assert set(cands) == {"entropy", "percentile:99.99", "auto"} and all(
        isinstance(c["rank"], (int, str)) for c in cands.values()
    )
    sqnr = {m: c["outputs"]["y"]["sqnr_db"] for m, c in cands.items()}
    assert sqnr["auto"] > sqnr["entropy"] + 3  # entropy clipped the tail feeding the MatMul
    assert [c["method"] for c in doc["candidates"][1:]][-1] == "entropy"
    cw = doc["clip_warnings"]
    assert "tail" in [w["tensor"] for w in cw["entropy"]["tensors"]] and "tail" not in [
        w["tensor"] for w in cw["auto"]["tensors"]
    ]
    assert "WARNING: entropy clips more than" in r.stdout
    assert _tensors(tmp_path / "cmp.methods/auto/scales.json")["tail"]["method"] != "entropy"
    assert "entropy clips" in (tmp_path / "cmp.html").read_text()


def test_auto_listed_and_spec_checked(cli):
    r = cli("methods")
    assert any(line.startswith("auto ") for line in r.stdout.splitlines())
    r = cli("calibrate", "m.onnx", "--data", "d.npz", "--method", "auto:3", expect=1)
    assert "auto" in r.stderr and "Traceback" not in r.stderr
