"""Third hostile pass (a new user's attack, 2026-12-07): user code that moves the working
directory or reuses its buffers, NaN the checks did not see, overlaps merge did not catch,
nothing-to-compare passing, FIFOs that hung a reader. Real CLI, real files."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest


def _error(r) -> str:
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    return r.stderr


def test_a_metric_that_changes_directory_is_an_error_not_a_traceback(cli, tmp_path, calibrated, conv_data):
    model, cal = calibrated
    (tmp_path / "chdir_metric.py").write_text(
        "import os, numpy as np\ndef score(outputs, labels):\n    os.chdir('/')\n    return np.ones(len(outputs['y']))\n"
    )
    r = cli(
        "validate",
        model,
        "--scales",
        cal / "scales.json",
        "--data",
        "calib.npz",  # relative: the cwd matters
        "--metric",
        "chdir_metric.py:score",
        "--report",
        "rep/r.html",
        expect=None,
    )
    assert "changed the working directory to /" in _error(r)
    assert not (tmp_path / "rep" / "r.html").exists() and not os.path.exists("/rep/r.html")


LOADER = """
import numpy as np
x = np.load({path!r})["x"]

def load_data():
    buf = np.empty((5,) + x.shape[1:], np.float32)
    for i in range(0, len(x) - 4, 5):
        {body}
"""


def test_a_loader_that_refills_one_buffer_gives_the_same_results(cli, tmp_path, conv_model, conv_data):
    """Reusing one array per batch (a common calibrator pattern) or writing into the array just
    yielded must not change what was calibrated: calibkit copies each yielded feed."""
    fresh = "yield {'x': x[i:i + 5].copy()}"
    reuse = "buf[:] = x[i:i + 5]\n        yield {'x': buf}"
    poison = "b = {'x': x[i:i + 5].copy()}\n        yield b\n        b['x'][:] = np.nan"
    outs = {}
    for name, body in (("fresh", fresh), ("reuse", reuse), ("poison", poison)):
        (tmp_path / f"{name}.py").write_text(LOADER.format(path=str(conv_data), body=body))
        cli("calibrate", conv_model, "--data", tmp_path / f"{name}.py", "--batch-size", "3", "-o", tmp_path / name)
        doc = json.loads((tmp_path / name / "scales.json").read_text())
        assert not any(t.get("nan") for t in doc["tensors"].values()), name
        outs[name] = doc["tensors"]  # (the data description names each loader)
    assert outs["reuse"] == outs["fresh"] and outs["poison"] == outs["fresh"]


def test_drift_fails_on_nan_the_calibration_never_saw(cli, tmp_path, calibrated, conv_data):
    model, cal = calibrated
    x = np.load(conv_data)["x"].copy()
    x[:4] = np.nan
    np.savez(tmp_path / "nan.npz", x=x)
    r = cli(
        "drift",
        model,
        "--histograms",
        cal / "histograms.npz",
        "--data",
        tmp_path / "nan.npz",
        "--max-clip",
        "0.5",
        expect=3,
    )
    assert "NaN/Inf" in r.stderr and "RECALIBRATE" in r.stdout, (r.stdout, r.stderr)
    r = cli("drift", model, "--histograms", cal / "histograms.npz", "--data", tmp_path / "nan.npz")
    assert "warning: the new data has NaN/Inf values" in r.stderr
    r = cli("drift", model, "--histograms", cal / "histograms.npz", "--data", conv_data, "--max-clip", "0.5")
    assert "NaN" not in r.stderr  # the same data: no warning, a pass


def test_calibrate_warns_on_stderr_when_the_data_holds_inf(cli, tmp_path, conv_model, conv_data):
    x = np.load(conv_data)["x"].copy()
    x[3] = np.inf
    np.savez(tmp_path / "inf.npz", x=x)
    r = cli("calibrate", conv_model, "--data", tmp_path / "inf.npz", "-o", tmp_path / "o")
    assert "warning:" in r.stderr and "NaN/Inf" in r.stderr and "'x'" in r.stderr, r.stderr
    r = cli("calibrate", conv_model, "--data", conv_data, "-o", tmp_path / "o2")
    assert "NaN/Inf" not in r.stderr


def test_merge_refuses_a_whole_set_with_one_of_its_own_parts(cli, tmp_path, conv_model, conv_data):
    cli("calibrate", conv_model, "--data", conv_data, "--shards", "4", "-o", tmp_path / "sh", expect=None)
    r = cli(
        "merge",
        tmp_path / "sh" / "histograms.npz",
        tmp_path / "sh" / "shards" / "part-1-of-4.histograms.npz",
        "-o",
        tmp_path / "m.npz",
        expect=None,
    )
    assert "count twice" in _error(r) and not (tmp_path / "m.npz").exists()
    parts = sorted((tmp_path / "sh" / "shards").glob("part-*-of-4.histograms.npz"))
    cli("merge", *parts, "-o", tmp_path / "parts.npz")  # the parts alone are fine


def test_shards_of_one_repeated_sample_are_not_enough(cli, tmp_path, conv_model, conv_data):
    x = np.load(conv_data)["x"]
    np.savez(tmp_path / "rep.npz", x=np.tile(x[:1], (16, 1, 1, 1)))
    r = cli("calibrate", conv_model, "--data", tmp_path / "rep.npz", "--shards", "4", "-o", tmp_path / "s", expect=3)
    assert "exactly the same values" in " ".join(r.stdout.split())
    assert json.loads((tmp_path / "s" / "sufficiency.json").read_text())["enough"] is False


def test_diff_with_nothing_in_common_fails(cli, tmp_path, calibrated):
    _, cal = calibrated
    doc = json.loads((cal / "scales.json").read_text())
    doc["tensors"] = {}
    (tmp_path / "empty.json").write_text(json.dumps(doc))
    r = cli("diff", tmp_path / "empty.json", tmp_path / "empty.json", "--max-change", "0.05", expect=3)
    assert "nothing was compared" in " ".join(r.stdout.split())


def test_fifos_are_named_and_never_waited_on(tmp_path, calibrated, conv_data):
    model, cal = calibrated
    os.mkfifo(tmp_path / "ff.json")
    os.mkfifo(tmp_path / "ff.npy")
    os.mkfifo(tmp_path / "ff.cache")
    cases = [
        ["validate", model, "--scales", tmp_path / "ff.json", "--data", conv_data, "--report", tmp_path / "r.html"],
        [
            "validate",
            model,
            "--scales",
            cal / "scales.json",
            "--data",
            conv_data,
            "--labels",
            tmp_path / "ff.npy",
            "--report",
            tmp_path / "r2.html",
        ],
        ["inspect", tmp_path / "ff.json"],
        ["inspect", "/dev/zero"],
        ["drift", model, "--histograms", tmp_path / "ff.npy", "--data", conv_data],
    ]
    for args in cases:
        r = subprocess.run(
            [sys.executable, "-m", "calibkit", *map(str, args)], capture_output=True, text=True, timeout=60
        )
        assert r.returncode == 1 and "Traceback" not in r.stderr, (args, r.stderr)
        assert "not a regular file" in r.stderr and "not found" not in r.stderr, (args, r.stderr)


def test_a_relative_results_path_is_from_the_current_directory(cli, tmp_path, calibrated, conv_data):
    model, cal = calibrated
    r = cli(
        "validate",
        model,
        "--scales",
        cal / "scales.json",
        "--data",
        conv_data,
        "--report",
        "rep/r.html",
        "--results",
        "res.json",
        expect=None,
    )
    assert r.returncode in (0, 3), r.stderr
    assert (tmp_path / "res.json").is_file() and not (tmp_path / "rep" / "res.json").exists()
    assert str(tmp_path / "res.json") in r.stdout


def test_quantize_scales_say_why_each_amax_was_kept(cli, tmp_path, conv_model, conv_data):
    """quantize's scales.json has method auto at the top, but its rows carry another method's
    amax (criterion): a clip warning must not say "auto chose it as the least expected error",
    and each row's expected_mse is that of its own amax."""
    from types import SimpleNamespace

    from calibkit.artifacts.histograms import load
    from calibkit.methods.auto import expected_mse
    from calibkit.numerics.clipping import warnings

    cli("quantize", conv_model, "--data", conv_data, "--val", conv_data, "-o", tmp_path / "q", expect=None)
    doc = json.loads((tmp_path / "q" / "scales.json").read_text())
    hs = load(tmp_path / "q" / "histograms.npz")
    for name, row in doc["tensors"].items():
        assert row["expected_mse"] == pytest.approx(float(expected_mse(hs.tensors[name], [row["amax"]])[0]), rel=1e-9)
    table = SimpleNamespace(
        method="auto",
        params={},
        tensors={
            "t": {"clipped": 0.5, "amax": 1.0, "absmax": 3.0, "method": "entropy", "criterion": "calibrate entropy"},
            "u": {"clipped": 0.5, "amax": 1.0, "absmax": 3.0, "method": "mse"},
        },
    )
    by = {w.tensor: w.message() for w in warnings(table, 0.01)}
    assert "quantize` kept it (calibrate entropy)" in by["t"] and "auto chose" not in by["t"]
    assert "auto chose it" in by["u"]


def test_an_empty_model_and_nothing_to_lint_do_not_pass(cli, tmp_path, conv_model, calibrated):
    _, cal = calibrated
    (tmp_path / "empty.onnx").write_bytes(b"")
    for args in (
        ["placement", "empty.onnx", "--strict"],
        ["export-qdq", "empty.onnx", "--scales", cal / "scales.json", "--force", "-o", "e.onnx"],
    ):
        assert "has an empty graph" in _error(cli(*args, expect=None))
    r = cli("placement", conv_model, "--strict", expect=2)
    assert "nothing to lint" in r.stderr


def test_an_output_that_is_an_input_is_refused_before_the_work(cli, tmp_path, conv_model, conv_data, calibrated):
    _, cal = calibrated
    (tmp_path / "q").mkdir()
    (tmp_path / "q" / "histograms.npz").write_bytes(conv_data.read_bytes())
    r = cli("quantize", conv_model, "--data", "q/histograms.npz", "--val", conv_data, "-o", "q", expect=None)
    assert "is also an input of this run" in _error(r) and "calibrating" not in r.stderr
    r = cli(
        "validate",
        conv_model,
        "--scales",
        cal / "scales.json",
        "--data",
        conv_data,
        "--report",
        cal / "scales.json",
        expect=None,
    )
    assert "is also an input of this run" in _error(r) and "validating" not in r.stderr


def test_npy_files_that_start_like_a_zip_are_one_line_errors(cli, tmp_path, conv_model, conv_data, calibrated):
    """Found by CI's fuzzing: a .npy whose bytes begin with PK\\x03\\x04 made numpy try a zip
    (BadZipFile, a traceback); an .npz under a .npy name crashed on .ndim."""
    _, cal = calibrated
    (tmp_path / "pk.npy").write_bytes(b"PK\x03\x04")
    (tmp_path / "zip.npy").write_bytes(conv_data.read_bytes())
    for name, said in (("pk.npy", "not a valid .npy array"), ("zip.npy", "is an .npz archive")):
        r = cli("calibrate", conv_model, "--data", tmp_path / name, "-o", tmp_path / "o", expect=None)
        assert said in _error(r)
        r = cli(
            "validate",
            conv_model,
            "--scales",
            cal / "scales.json",
            "--data",
            conv_data,
            "--labels",
            tmp_path / name,
            "--report",
            tmp_path / "r.html",
            expect=None,
        )
        assert "labels" in _error(r)
