"""Issue 21, second hostile pass: verdicts on poisoned inputs, user code that exits, outputs
that would replace inputs, readers that trusted too much. Real CLI, real files."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest


def _one_line_error(r) -> str:
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.startswith("calibkit: error: ")]
    assert len(lines) == 1, r.stderr
    return lines[0]


def _fp32_labels(model, x) -> np.ndarray:
    s = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0].argmax(1)


# ---------------------------------------------------------------- item 3: NaN in the reference
def test_nan_in_the_fp32_reference_fails_the_verdict(cli, tmp_path, calibrated):
    model, cal = calibrated
    x = np.random.default_rng(2).normal(0, 1, (40, 3, 8, 8)).astype(np.float32)
    labels = _fp32_labels(model, x)  # FP32 is right on every clean sample: accuracy can be judged
    x[3, 0, 0, 0] = np.nan
    np.savez(tmp_path / "val.npz", x=x)
    np.save(tmp_path / "labels.npy", labels)
    r = cli(
        "validate",
        model,
        "--scales",
        cal / "scales.json",
        "--data",
        tmp_path / "val.npz",
        "--labels",
        tmp_path / "labels.npy",
        "--max-accuracy-drop",
        "10",
        "--backends",
        "ort-int8",
        "--report",
        tmp_path / "r" / "report.html",
        expect=None,
    )
    assert r.returncode == 3, (r.returncode, r.stderr)
    assert "the FP32 reference has" in r.stderr and "NaN/Inf" in r.stderr
    doc = json.loads((tmp_path / "r" / "report.results.json").read_text())
    assert doc["pass"] is False


# ---------------------------------------------------------------- item 4: user code that exits
def test_a_loader_script_that_exits_is_an_error_naming_it(cli, tmp_path, conv_model):
    for body, where in (
        ("import sys\ndef load_data():\n    sys.exit(0)\n    yield {}\n", "load_data"),
        ("import sys\nsys.exit(0)\n", "import"),
        # a hard exit would end calibkit on the spot with the script's status (0: "success", nothing written)
        ("import os\ndef load_data():\n    os._exit(0)\n    yield {}\n", "hard_load_data"),
        ("import os\nos._exit(0)\n", "hard_import"),
    ):
        script = tmp_path / f"exits_{where}.py"
        script.write_text(body)
        line = _one_line_error(cli("calibrate", conv_model, "--data", script, "-o", tmp_path / "o", expect=None))
        call = "os._exit(0)" if where.startswith("hard") else "sys.exit(0)"
        assert script.name in line and call in line, line
        assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------- item 6: outputs over inputs
def test_export_qdq_over_its_own_model_is_refused(cli, tmp_path, calibrated):
    model, cal = calibrated
    before = model.read_bytes()
    line = _one_line_error(cli("export-qdq", model, "--scales", cal / "scales.json", "-o", model, expect=None))
    assert "is also an input" in line and "MODEL" in line
    assert model.read_bytes() == before


def test_validate_report_over_the_calibration_it_reads_is_refused(cli, tmp_path, calibrated, conv_data):
    model, cal = calibrated
    before = {f.name: f.read_bytes() for f in cal.iterdir() if f.is_file()}
    for extra in (
        ["--report", cal / "scales.json"],
        ["--report", tmp_path / "r.html", "--results", cal / "histograms.npz"],
        ["--report", tmp_path / "r2.html", "--results", conv_data],
    ):
        line = _one_line_error(
            cli("validate", model, "--scales", cal / "scales.json", "--data", conv_data, *extra, expect=None)
        )
        assert "is also an input" in line, line
    assert {f.name: f.read_bytes() for f in cal.iterdir() if f.is_file()} == before


def test_calibrate_may_still_rethreshold_its_own_histograms_in_place(cli, tmp_path, calibrated):
    """The one legitimate overlap: `calibrate --histograms OUT/histograms.npz -o OUT` replaces
    its own set, and histograms.npz stays in the new set's manifest (item 8)."""
    model, cal = calibrated
    cli("calibrate", model, "--histograms", cal / "histograms.npz", "--method", "minmax", "-o", cal)
    manifest = json.loads((cal / ".calibkit" / "calibrate.manifest.json").read_text())
    assert "histograms.npz" in manifest["files"]


# ---------------------------------------------------------------- item 8: readers
def test_a_set_missing_a_file_is_refused(cli, tmp_path, calibrated):
    model, cal = calibrated
    (cal / "histograms.npz").unlink()
    line = _one_line_error(
        cli("export-qdq", model, "--scales", cal / "scales.json", "-o", tmp_path / "q.onnx", expect=None)
    )
    assert "histograms.npz" in line and "missing" in line


def test_an_unreadable_manifest_is_refused_not_skipped(cli, tmp_path, calibrated):
    model, cal = calibrated
    cache = next(cal.glob("*.cache"))
    cache.write_bytes(cache.read_bytes().replace(b"\n", b"\n ", 1))  # an edited cache
    (cal / ".calibkit" / "calibrate.manifest.json").write_text("{not json")
    line = _one_line_error(cli("inspect", cache, expect=None))
    assert "calibrate.manifest.json" in line and "not a readable calibkit manifest" in line


def test_compare_set_manifest_names_compare(cli, tmp_path, calibrated, conv_data):
    model, cal = calibrated
    cli(
        "compare",
        model,
        "--histograms",
        cal / "histograms.npz",
        "--data",
        conv_data,
        "--methods",
        "entropy,minmax",
        "--report",
        tmp_path / "c" / "report.html",
    )
    (mf,) = (tmp_path / "c" / "report.methods" / ".calibkit").glob("*.manifest.json")
    assert json.loads(mf.read_text())["command"] == "compare"


def test_negative_sample_count_in_histograms_is_refused(cli, tmp_path, calibrated):
    _, cal = calibrated
    with np.load(cal / "histograms.npz") as z:
        d = dict(z)
    meta = json.loads(bytes(d["meta"]).decode())
    meta["samples"] = -5
    d["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(tmp_path / "h.npz", **d)
    line = _one_line_error(cli("inspect", tmp_path / "h.npz", expect=None))
    assert "h.npz" in line and "corrupt" in line


def test_null_model_section_in_scales_is_no_traceback(cli, tmp_path, calibrated, conv_data):
    model, cal = calibrated
    doc = json.loads((cal / "scales.json").read_text())
    doc["model"] = None
    (tmp_path / "s.json").write_text(json.dumps(doc))
    for args in (
        ("export-qdq", model, "--scales", tmp_path / "s.json", "-o", tmp_path / "q.onnx"),
        ("inspect", tmp_path / "s.json"),
    ):
        r = cli(*args, expect=None)
        assert "Traceback" not in r.stderr and r.returncode in (0, 1), r.stderr


def test_a_damaged_npz_member_is_an_error_naming_the_file(cli, tmp_path, conv_model, conv_data):
    raw = bytearray(conv_data.read_bytes())
    raw[500:540] = b"\xff" * 40  # inside x.npy's data: the member's CRC no longer matches
    bad = tmp_path / "bad.npz"
    bad.write_bytes(bytes(raw))
    line = _one_line_error(cli("calibrate", conv_model, "--data", bad, "-o", tmp_path / "o", expect=None))
    assert "bad.npz" in line and "damaged" in line


def test_a_damaged_cached_fp32_reference_is_recomputed(tmp_path, calibrated, conv_data):
    import os
    import subprocess
    import sys

    model, cal = calibrated
    env = {**os.environ, "COLUMNS": "80", "NO_COLOR": "1", "CALIBKIT_CACHE": str(tmp_path / "cache")}
    argv = [sys.executable, "-m", "calibkit", "sensitivity", str(model), "--scales", str(cal / "scales.json")]
    argv += ["--data", str(conv_data), "--max-samples", "8"]

    def run(out):
        return subprocess.run([*argv, "-o", str(tmp_path / out)], capture_output=True, text=True, env=env, timeout=300)

    first = run("s1")
    assert first.returncode == 0, first.stderr
    (entry,) = (tmp_path / "cache" / "reference").glob("*.npz")
    raw = bytearray(entry.read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 16] = b"\x00" * 16
    entry.write_bytes(bytes(raw))
    second = run("s2")
    assert second.returncode == 0 and "Traceback" not in second.stderr, second.stderr
    a = json.loads((tmp_path / "s1" / "sensitivity.json").read_text())
    b = json.loads((tmp_path / "s2" / "sensitivity.json").read_text())
    assert a.get("layers") == b.get("layers")


# ---------------------------------------------------------------- item 10: nonsense accepted
@pytest.mark.parametrize(
    "extra,named",
    [
        (["--data", "DATA"], "--data"),
        (["--max-samples", "3"], "--max-samples"),
        (["--recollect"], "--recollect"),
    ],
)
def test_histograms_with_collection_options_is_refused(cli, tmp_path, calibrated, conv_data, extra, named):
    model, cal = calibrated
    extra = [conv_data if a == "DATA" else a for a in extra]
    line = _one_line_error(
        cli("calibrate", model, "--histograms", cal / "histograms.npz", *extra, "-o", tmp_path / "o", expect=None)
    )
    assert named in line and "--histograms" in line
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("version", ["10.999", "10.16.100", "10.1.2.3.4"])
def test_a_trt_version_out_of_range_is_refused_not_rounded(cli, tmp_path, calibrated, version):
    model, cal = calibrated
    line = _one_line_error(
        cli(
            "calibrate",
            model,
            "--histograms",
            cal / "histograms.npz",
            "--trt-version",
            version,
            "-o",
            tmp_path / "o",
            expect=None,
        )
    )
    assert "--trt-version" in line and version in line


# ---------------------------------------------------------------- item 9: tracebacks
@pytest.mark.parametrize("body,why", [("[" * 100000 + "]" * 100000, "nested"), ('{"x": ' + "9" * 5000 + "}", "number")])
def test_from_report_that_json_cannot_hold_is_an_error(cli, tmp_path, conv_model, body, why):
    report = tmp_path / "r.json"
    report.write_text(body)
    line = _one_line_error(
        cli(
            "build",
            conv_model,
            "--from-report",
            report,
            "--engine",
            tmp_path / "e.plan",
            "--print-trtexec",
            expect=None,
        )
    )
    assert "--from-report" in line and why in line


def test_image_size_too_large_is_an_error(cli, tmp_path, conv_model):
    from PIL import Image

    (tmp_path / "imgs").mkdir()
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(tmp_path / "imgs" / "a.png")
    line = _one_line_error(
        cli(
            "calibrate",
            conv_model,
            "--data",
            tmp_path / "imgs",
            "--size",
            "99999999,99999999",
            "-o",
            tmp_path / "o",
            expect=None,
        )
    )
    assert "--size" in line


def test_a_metric_returning_huge_scores_gives_a_report_not_a_traceback(cli, tmp_path, calibrated, conv_data):
    model, cal = calibrated
    (tmp_path / "m.py").write_text(
        "import numpy as np\ndef fn(outputs, labels):\n    return np.full(len(next(iter(outputs.values()))), 1e308)\n"
    )
    r = cli(
        "validate",
        model,
        "--scales",
        cal / "scales.json",
        "--data",
        conv_data,
        "--metric",
        f"{tmp_path / 'm.py'}:fn",
        "--report",
        tmp_path / "r" / "r.html",
        expect=None,
    )
    assert "Traceback" not in r.stderr, r.stderr
    # since session 4: a one-line error that says what is wrong (the x100 average overflowed, and the
    # report then blamed NaN), not a report of inf accuracies
    assert r.returncode == 1 and "too large to average" in r.stderr and not (tmp_path / "r").exists()


# ---------------------------------------------------------------- item 11: messages
def test_a_model_with_no_inputs_says_so(cli, tmp_path, conv_data):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    g = helper.make_graph(
        [helper.make_node("Constant", [], ["y"], value=numpy_helper.from_array(np.ones(3, np.float32)))],
        "g",
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, tmp_path / "noin.onnx")
    line = _one_line_error(
        cli("calibrate", tmp_path / "noin.onnx", "--data", conv_data, "-o", tmp_path / "o", expect=None)
    )
    assert "declares no inputs" in line and "are: ;" not in line


def test_a_symlink_loop_or_a_fifo_is_not_called_missing(cli, tmp_path, conv_model, conv_data):
    import os

    (tmp_path / "a.onnx").symlink_to(tmp_path / "b.onnx")
    (tmp_path / "b.onnx").symlink_to(tmp_path / "a.onnx")
    os.mkfifo(tmp_path / "fifo.onnx")
    os.mkfifo(tmp_path / "fifo.npz")
    cases = [
        (["calibrate", tmp_path / "a.onnx", "--data", conv_data], "loops"),
        (["calibrate", tmp_path / "fifo.onnx", "--data", conv_data], "not a regular file"),
        (["calibrate", conv_model, "--data", tmp_path / "a.onnx"], "loops"),
        (["calibrate", conv_model, "--data", tmp_path / "fifo.npz"], "not a regular file"),
    ]
    for args, said in cases:
        line = _one_line_error(cli(*args, "-o", tmp_path / "o", expect=None))
        assert said in line and "not found" not in line, line


def test_ort_load_errors_carry_no_cpp_source_path(cli, tmp_path, conv_model, conv_data):
    import onnx

    m = onnx.load(conv_model)
    m.opset_import[0].version = 99
    onnx.save(m, tmp_path / "op99.onnx")
    line = _one_line_error(
        cli("calibrate", tmp_path / "op99.onnx", "--data", conv_data, "-o", tmp_path / "o", expect=None)
    )
    assert "onnxruntime_src" not in line and "::" not in line, line


def test_empty_devices_says_it_names_no_gpu(cli, tmp_path, conv_model, conv_data):
    line = _one_line_error(
        cli("calibrate", conv_model, "--data", conv_data, "--devices", "", "-o", tmp_path / "o", expect=None)
    )
    assert "names no GPU" in line and "0..-1" not in line


# ---------------------------------------------------------------- fresh attack (issue 21, done-when)
def test_outputs_inside_a_calibkit_folder_are_refused(cli, tmp_path, calibrated, conv_data):
    """A publish into .calibkit/ would leave a journal that recovery (rightly) refuses."""
    model, cal = calibrated
    for args in (
        ("calibrate", model, "--data", conv_data, "-o", tmp_path / "x" / ".calibkit"),
        ("export-qdq", model, "--scales", cal / "scales.json", "-o", cal / ".calibkit" / "q.onnx"),
    ):
        line = _one_line_error(cli(*args, expect=None))
        assert ".calibkit folder" in line, line
    assert not (cal / ".calibkit" / "q.onnx").exists()


def test_a_loader_that_changes_directory_is_refused_and_writes_nowhere(cli, tmp_path, conv_model):
    """A loader calling os.chdir between batches would move the run's relative outputs to the
    other folder: refused, the directory put back, nothing published anywhere."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "ld.py").write_text(
        "import os\nimport numpy as np\n"
        "def load_data():\n"
        "    yield {'x': np.ones((2, 3, 8, 8), np.float32)}\n"
        f"    os.chdir({str(elsewhere)!r})\n"
        "    yield {'x': np.ones((2, 3, 8, 8), np.float32)}\n"
    )
    r = cli("calibrate", conv_model, "--data", "ld.py:load_data", "-o", "out", expect=1)
    assert "changed the working directory" in r.stderr
    assert not (elsewhere / "out").exists() and not (tmp_path / "out" / "scales.json").exists()
