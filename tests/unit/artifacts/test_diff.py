"""calibkit diff: two calibrations of one model compared per tensor, in any file pairing; the
CI check (--max-change) exits 3; the HTML page and JSON hold the same rows. Real CLI, real files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from calibkit.artifacts import scales as scales_io
from calibkit.artifacts import trt_cache
from calibkit.checks.diff import diff_files


@pytest.fixture
def two(cli, conv_model, conv_data, tmp_path):
    cli("calibrate", conv_model, "--data", conv_data, "-o", tmp_path / "e")
    cli("calibrate", conv_model, "--data", conv_data, "--method", "minmax", "-o", tmp_path / "m")
    return tmp_path / "e", tmp_path / "m"


def test_same_calibration_in_every_pairing_has_no_change(two):
    e, _ = two
    files = [e / "scales.json", e / "conv.cache", e / "histograms.npz"]
    for a in files:
        for b in files:
            d = diff_files(a, b)  # histograms are thresholded with entropy, the method of e/
            assert d.rows and not d.added and not d.removed
            # a cache stores float32(amax)/127: amax comes back within a float32 step
            assert max(r.change for r in d.rows) < 1e-6, (a.name, b.name, d.rows[0])
            assert d.passed(1e-6)


def test_rows_are_the_amax_ratio_and_clipped_fraction_of_each_side(two):
    e, m = two
    d = diff_files(e / "scales.json", m / "scales.json")
    ta, tb = scales_io.read(e / "scales.json"), scales_io.read(m / "scales.json")
    assert {r.tensor for r in d.rows} == set(ta.tensors) == set(tb.tensors)
    for r in d.rows:
        assert r.amax_a == ta.tensors[r.tensor]["amax"] and r.amax_b == tb.tensors[r.tensor]["amax"]
        assert r.change == pytest.approx(abs(r.amax_b / r.amax_a - 1))
        assert r.clipped_a == ta.tensors[r.tensor]["clipped"] and r.clipped_b == 0.0  # minmax clips nothing
        assert (r.method_a, r.method_b) == ("entropy", "minmax")
    assert [r.change for r in d.rows] == sorted((r.change for r in d.rows), reverse=True)
    assert d.rows[0].change > 0.05  # the outlier in conv_data: minmax's amax is far above entropy's
    # a cache's method is not recorded: never a method change
    assert not diff_files(e / "conv.cache", m / "scales.json").method_changes()


def test_max_change_exit_code_text_json_and_html(cli, two, tmp_path):
    e, m = two
    top = diff_files(e / "scales.json", m / "scales.json").rows[0]
    r = cli(
        "diff",
        e / "scales.json",
        m / "scales.json",
        "--max-change",
        "0.05",
        "--json",
        tmp_path / "d.json",
        "--report",
        tmp_path / "d.html",
        expect=3,
    )
    assert "FAIL (--max-change 0.05)" in " ".join(r.stdout.split()) and "calibkit: diff: FAIL" in r.stderr
    assert all(len(line) <= 80 for line in r.stdout.splitlines() if not line.startswith(("A ", "B ", "wrote")))
    doc = json.loads((tmp_path / "d.json").read_text())
    assert doc["max_change"]["passed"] is False and top.tensor in doc["max_change"]["over"]
    assert doc["tensors"][0]["tensor"] == top.tensor and doc["tensors"][0]["amax_b"] == top.amax_b
    page = (tmp_path / "d.html").read_text()
    assert "data:image/png;base64," in page and top.tensor in page
    # a limit above the largest change passes
    r = cli("diff", e / "scales.json", m / "scales.json", "--max-change", f"{top.change * 1.01:.6f}")
    assert "PASS" in r.stdout


def test_added_and_removed_tensors_fail_the_check(cli, two, tmp_path):
    e, _ = two
    table = scales_io.read(e / "scales.json")
    name = next(iter(table.tensors))
    c = trt_cache.read(e / "conv.cache")
    del c.scales[name]
    c.scales["new_tensor"] = 0.5
    (tmp_path / "edited.cache").write_text(c.text())
    r = cli("diff", e / "scales.json", tmp_path / "edited.cache", "--max-change", "0.5", expect=3)
    text = " ".join(r.stdout.split())
    assert f"removed (only in A): {name}" in text and "added (only in B): new_tensor" in text
    assert "tensors were added or removed" in text


def test_bad_input_is_one_line(cli, two, tmp_path):
    e, _ = two
    (tmp_path / "junk.cache").write_text("not a cache\n")
    for args in (
        [e / "scales.json", tmp_path / "missing.json"],
        [e / "scales.json", tmp_path / "junk.cache"],
        [e / "scales.json", e / "scales.json", "--max-change", "-1"],
    ):
        r = cli("diff", *args, expect=1)
        assert r.stderr.startswith("calibkit: error: ") and "Traceback" not in r.stderr, r.stderr


def test_damaged_and_unusual_files_are_named_for_what_they_are(cli, two, tmp_path):
    import os

    e, _ = two
    (tmp_path / "cut.npz").write_bytes((e / "histograms.npz").read_bytes()[:3000])
    os.mkfifo(tmp_path / "fifo.json")
    os.symlink(tmp_path / "loop_b", tmp_path / "loop_a")
    os.symlink(tmp_path / "loop_a", tmp_path / "loop_b")
    os.symlink(tmp_path / "gone.json", tmp_path / "dangling.json")
    for name, said in [
        ("cut.npz", "damaged or cut short"),
        ("fifo.json", "not a regular file"),
        ("loop_a", "symlink that leads nowhere"),
        ("dangling.json", "symlink that leads nowhere"),
        ("missing.json", "not found"),
    ]:
        r = cli("diff", e / "scales.json", tmp_path / name, expect=1)
        assert said in r.stderr and name in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_histogram_sides_use_the_method_given(two):
    e, m = two
    d = diff_files(e / "histograms.npz", m / "scales.json", method="minmax")
    assert np.allclose([r.change for r in d.rows], 0.0, atol=1e-7)
