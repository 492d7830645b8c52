"""Fourth hostile pass (a new user's 30-minute attack, 2026-12-07, session 4): outputs that are
links or devices, hostile histograms, batch axes the model fixes, and the messages it found
false. Real CLI, real files."""

from __future__ import annotations

import os

import numpy as np
import pytest
from test_hostile_pass2 import _one_line_error as _error  # exit 1, no traceback, one "calibkit: error:" line


def test_an_output_that_is_a_link_or_a_fifo_is_refused_and_left_alone(cli, tmp_path, calibrated, conv_data):
    """Publishing replaces an output whole: a symlink became a regular file (its target never
    written) and, as root, ``--json /dev/null`` replaced the device node with a file."""
    model, cal = calibrated
    real = tmp_path / "real.json"
    real.write_text("keep")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    scales = cal / "scales.json"
    for out in (link, fifo):
        for args in (
            ("diff", scales, scales, "--json", out),
            ("validate", model, "--scales", scales, "--data", conv_data, "--report", out),
        ):
            line = _error(cli(*args, expect=None))
            assert str(out) in line and ("symbolic link" in line if out == link else "not a regular file" in line)
    assert link.is_symlink() and os.readlink(link) == str(real) and real.read_text() == "keep"
    assert fifo.is_fifo()


def test_histograms_with_a_range_exponent_their_values_do_not_set_are_corrupt(cli, tmp_path, calibrated, conv_data):
    """An exponent inside the accepted range but far above max|x| overflowed the expected-error
    sums to inf, and scales.json's writer raised (a traceback)."""
    model, cal = calibrated
    d = dict(np.load(cal / "histograms.npz"))
    d["exp"] = d["exp"].copy()
    d["exp"][1] = 1000
    np.savez(tmp_path / "bigexp.npz", **d)
    for cmd, more in (("calibrate", ["-o", tmp_path / "c"]), ("compare", ["--data", conv_data, "--report", tmp_path / "r.html"])):
        line = _error(cli(cmd, model, "--histograms", tmp_path / "bigexp.npz", *more, expect=None))
        assert "bigexp.npz is corrupt" in line and "range exponent 1000" in line


def test_a_sample_axis_the_model_fixes_and_too_few_samples_is_an_error(cli, tmp_path, conv_model, conv_data):
    """--batch-axis on an axis the model fixes, with fewer samples than it: every batch was
    dropped and calibrate raised StopIteration (a traceback)."""
    line = _error(
        cli("calibrate", conv_model, "--data", conv_data, "--batch-axis", "x:1", "--max-samples", "1",
            "-o", tmp_path / "o", expect=None)
    )  # fmt: skip
    assert "no batch the model can run" in line and "x axis 1 = 3" in line
    assert not (tmp_path / "o").exists()


def test_a_decode_pool_stopped_mid_stream_quiets_the_cancelled_futures(monkeypatch):
    """SIGTERM into `calibrate --workers 2` printed `InvalidStateError: CANCELLED` from the pool's
    manager thread in 6 of 33 runs: the decode pool cancelled its futures without the quiet hook,
    which only the sensitivity executor's abort installed."""
    import operator
    import threading

    from calibkit.data.prefetch import ordered_map

    monkeypatch.setattr(threading, "excepthook", threading.__excepthook__)
    it = ordered_map(operator.mul, list(range(64)), 2, workers=1, chunk=1, ahead=8)
    assert next(it) == 0 and next(it) == 2
    it.close()  # what an interrupt does to the stream: futures still pending are cancelled
    assert getattr(threading.excepthook, "_calibkit_quiet", False)


def test_histograms_naming_tensors_the_model_lacks_are_refused(cli, tmp_path, calibrated, conv_data):
    """Renamed tensors under the right model fingerprint: calibrate wrote a TensorRT cache of
    tensors no build has (exit 0)."""
    model, cal = calibrated
    d = dict(np.load(cal / "histograms.npz"))
    d["names"] = np.array([f"renamed{i}" for i in range(len(d["names"]))])
    np.savez(tmp_path / "names.npz", **d)
    for cmd, more in (("calibrate", ["-o", tmp_path / "c"]), ("compare", ["--data", conv_data, "--report", tmp_path / "r.html"])):
        line = _error(cli(cmd, model, "--histograms", tmp_path / "names.npz", *more, expect=None))
        assert "this model does not have" in line and "'renamed0'" in line
    assert not (tmp_path / "c").exists()


def test_a_cache_and_the_scales_it_was_written_from_do_not_differ(cli, tmp_path, calibrated):
    """The cache's amax read back as scale * 127 in float64 differed from scales.json's in the
    last bits: `diff --max-change 0` failed while saying the largest change was 0.00%."""
    model, cal = calibrated
    cache = next(cal.glob("*.cache"))
    for a, b in ((cache, cal / "scales.json"), (cal / "scales.json", cache)):
        r = cli("diff", a, b, "--max-change", "0", expect=None)
        assert r.returncode == 0 and "PASS" in r.stdout, r.stdout + r.stderr


@pytest.mark.parametrize(
    "body, says",
    [
        ("return np.full(len(labels), 1e308)", "too large to average"),  # x100 overflowed: "NaN?" was false
        ("return None", "returned None"),  # "got 1"
        ("return np.ones(len(labels)) * (1 + 2j)", "complex"),  # the imaginary part was dropped: PASS
    ],
)
def test_metric_returns_that_were_misread(cli, tmp_path, calibrated, conv_data, body, says):
    model, cal = calibrated
    n = len(np.load(conv_data)["x"])
    np.save(tmp_path / "labels.npy", np.zeros(n, np.int64))
    (tmp_path / "m.py").write_text(f"import numpy as np\ndef metric(outputs, labels):\n    {body}\n")
    line = _error(
        cli("validate", model, "--scales", cal / "scales.json", "--data", conv_data, "--labels", tmp_path / "labels.npy",
            "--metric", f"{tmp_path / 'm.py'}:metric", "--report", tmp_path / "r" / "r.html", expect=None)
    )  # fmt: skip
    assert says in line and "m.py:metric" in line
    assert not (tmp_path / "r").exists()


def test_messages_the_attack_found_false(cli, tmp_path, calibrated, conv_data):
    model, cal = calibrated
    scales = cal / "scales.json"
    r = cli("diff", scales, scales, "--limit", "-5", expect=2)  # printed "... 9 more" of 4 tensors
    assert "--limit" in r.stderr
    line = _error(cli("diff", scales, scales, "--json", scales, expect=None))
    assert "(B)" in line and "--b" not in line  # B is positional: there is no --b
    (tmp_path / "trunc.npz").write_bytes((cal / "histograms.npz").read_bytes()[:100])
    line = _error(cli("merge", cal / "histograms.npz", tmp_path / "trunc.npz", "-o", tmp_path / "m.npz", expect=None))
    assert "calibkit calibrate MODEL --data DATA --recollect" in line  # merge has no --recollect
    line = _error(cli("validate", model, "--scales", scales, "--data", conv_data, "--report", model / "r.html", expect=None))
    assert "is not a directory" in line and "another -o" not in line  # validate has no -o


def test_a_grayscale_model_fed_colour_images_is_told_about_preprocess(cli, tmp_path):
    from PIL import Image

    import calibkit

    demo = os.path.join(os.path.dirname(calibkit.__file__), "demo")
    folder = tmp_path / "rgb"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(folder / f"{i}.png")
    line = _error(cli("calibrate", os.path.join(demo, "digits_cnn.onnx"), "--data", folder, "-o", tmp_path / "o", expect=None))
    assert "3 channel(s)" in line and '"channels": "L"' in line and "--preprocess" in line


@pytest.mark.parametrize(
    "src, says",
    [
        ("import sys\nsys.stdout.close()\ndef metric(o, l):\n    return [1] * len(l)\n", "closed sys.stdout"),
        ("import sys\ndef metric(o, l):\n    sys.stderr.close()\n    return [1] * len(l)\n", "closed sys.stderr"),
        ("import io, sys\ndef metric(o, l):\n    sys.stdout = io.StringIO()\n    return [1] * len(l)\n", "replaced sys.stdout"),
    ],
)
def test_user_code_that_closes_calibkits_streams_is_an_error(cli, tmp_path, calibrated, conv_data, src, says):
    """A metric closing sys.stdout at import: every later message raised `I/O operation on
    closed file` (a traceback)."""
    model, cal = calibrated
    n = len(np.load(conv_data)["x"])
    np.save(tmp_path / "labels.npy", np.zeros(n, np.int64))
    (tmp_path / "m.py").write_text(src)
    line = _error(
        cli("validate", model, "--scales", cal / "scales.json", "--data", conv_data, "--labels", tmp_path / "labels.npy",
            "--metric", f"{tmp_path / 'm.py'}:metric", "--report", tmp_path / "r" / "r.html", expect=None)
    )  # fmt: skip
    assert says in line and "m.py" in line


def test_tensors_that_held_only_zeros_are_warned_about(cli, tmp_path, conv_data):
    """A zero-weight Conv: its output and the rest got amax 1.0 silently (only `degenerate` in
    scales.json), and validate then passed comparing zeros with zeros."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.zeros((4, 3, 3, 3), np.float32), "w")
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])],
        "zeros",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])],
        [w],
    )
    model = tmp_path / "zero.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(model))
    r = cli("calibrate", model, "--data", conv_data, "-o", tmp_path / "o")
    assert "held only zeros" in r.stderr and "'y'" in r.stderr


def test_replacing_another_models_set_names_the_files_it_removes(cli, tmp_path, conv_model, conv_data):
    """Calibrating a second model into the first one's folder removed `conv.cache` and its
    tensors.json without a word."""
    import shutil

    other = tmp_path / "other.onnx"
    shutil.copy(conv_model, other)
    cli("calibrate", conv_model, "--data", conv_data, "-o", tmp_path / "o")
    r = cli("calibrate", other, "--data", conv_data, "-o", tmp_path / "o")
    assert "removed 2 file(s) of the set this run replaced" in r.stderr
    assert f"{conv_model.stem}.cache" in r.stderr and not (tmp_path / "o" / f"{conv_model.stem}.cache").exists()
    r = cli("calibrate", other, "--data", conv_data, "-o", tmp_path / "o", "--recollect")
    assert "removed" not in r.stderr  # the same set again: nothing of it is gone


def test_an_output_folder_that_is_a_dangling_link_says_so(cli, tmp_path, conv_model, conv_data):
    (tmp_path / "out").symlink_to(tmp_path / "nowhere")
    line = _error(cli("calibrate", conv_model, "--data", conv_data, "-o", tmp_path / "out", expect=None))
    assert "symbolic link" in line and "nowhere" in line and "does not exist" in line


def test_a_loader_that_forks_leaves_the_published_set_alone(cli, tmp_path, conv_model):
    """The fork's os._exit raised inside the child, which then ran calibkit's error path: an
    orphan deadlocked, a false error line came after the success, and the child's clean-up
    deleted the published set's .calibkit/ folder."""
    import time

    (tmp_path / "fork.py").write_text(
        "import os, time\nimport numpy as np\n"
        "def load_data():\n"
        "    if os.fork() == 0:\n        time.sleep(1.0)\n        os._exit(0)\n"
        "    yield {'x': np.ones((4, 3, 8, 8), np.float32)}\n"
    )
    # the captured pipes close only when the fork, which holds them too, has ended
    r = cli("calibrate", conv_model, "--data", tmp_path / "fork.py", "-o", tmp_path / "o", expect=None)
    assert r.returncode == 0 and "error" not in r.stderr, r.stderr
    time.sleep(0.5)
    assert (tmp_path / "o" / ".calibkit" / "calibrate.manifest.json").is_file()


def test_a_metric_that_leaves_a_thread_running_does_not_hold_the_process(cli, tmp_path, calibrated, conv_data):
    """A non-daemon thread started by the metric kept `validate` alive after its report, deaf
    to SIGTERM, until the thread ended (then exit 0)."""
    import time

    model, cal = calibrated
    n = len(np.load(conv_data)["x"])
    np.save(tmp_path / "labels.npy", np.zeros(n, np.int64))
    (tmp_path / "m.py").write_text(
        "import threading, time\nimport numpy as np\n"
        "def metric(o, l):\n    threading.Thread(target=time.sleep, args=(60,), name='user-sleeper').start()\n"
        "    return np.ones(len(l))\n"
    )
    t0 = time.monotonic()
    r = cli("validate", model, "--scales", cal / "scales.json", "--data", conv_data, "--labels", tmp_path / "labels.npy",
            "--metric", f"{tmp_path / 'm.py'}:metric", "--report", tmp_path / "r" / "r.html", expect=None)  # fmt: skip
    assert time.monotonic() - t0 < 50 and r.returncode in (0, 3)
    assert "'user-sleeper'" in r.stderr and "exits without waiting" in r.stderr
    assert (tmp_path / "r" / "r.results.json").is_file()


def test_build_refuses_a_cache_published_for_another_model(cli, tmp_path, calibrated):
    """Same graph, other weights: the tensor names match, so the cache was accepted (exit 0 and a
    trtexec line) although the set it belongs to records another model."""
    import onnx
    from onnx import numpy_helper

    model, cal = calibrated
    m = onnx.load(str(model))
    for i, t in enumerate(m.graph.initializer):
        m.graph.initializer[i].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * 2, t.name))
    other = tmp_path / "other.onnx"
    onnx.save(m, str(other))
    cache = next(cal.glob("*.cache"))
    shapes = "x:1x3x8x8/4x3x8x8/8x3x8x8"
    args = ("--int8", "--cache", cache, "--engine", tmp_path / "e" / "m.plan", "--print-trtexec", "--shapes", shapes)
    line = _error(cli("build", other, *args, expect=None))
    assert "calibrated for another model" in line
    assert "trtexec" in cli("build", model, *args).stdout  # its own model still builds


def test_inspect_names_what_is_wrong_with_each_kind_of_file(cli, tmp_path, calibrated):
    model, cal = calibrated
    (tmp_path / "t.npz").write_bytes((cal / "histograms.npz").read_bytes()[:100])
    assert "histogram file (BadZipFile)" in _error(cli("inspect", tmp_path / "t.npz", expect=None))  # was "not a text calibration cache"
    (tmp_path / "t.layers.json").write_text("[1,2")
    assert "layers.json is a JSON object" in _error(cli("inspect", tmp_path / "t.layers.json", expect=None))  # was "bad header"
    assert "layers.json" in _error(cli("inspect", tmp_path / "missing.layers.json", expect=None))
    assert "layers.json" in cli("inspect", "--help").stdout


def test_merge_refuses_histograms_of_another_tensor_selection(cli, tmp_path, conv_model, conv_data):
    """`trt` and `all` histograms merged (exit 0): the result claimed every sample for tensors
    only one side held, and its bytes depended on the order."""
    cli("calibrate", conv_model, "--data", conv_data, "-o", tmp_path / "trt")
    np.savez(tmp_path / "more.npz", x=np.load(conv_data)["x"] * 2)
    cli("calibrate", conv_model, "--data", tmp_path / "more.npz", "--tensors", "all", "-o", tmp_path / "all")
    for a, b in (("trt", "all"), ("all", "trt")):
        line = _error(cli("merge", tmp_path / a / "histograms.npz", tmp_path / b / "histograms.npz",
                          "-o", tmp_path / f"m-{a}.npz", expect=None))  # fmt: skip
        assert "--tensors" in line and "same --tensors" in line


def test_a_method_parameter_given_twice_with_two_values_is_refused(cli, tmp_path, calibrated):
    """`--method percentile:99.9 --percentile 99.999` ran with 99.999 without a word."""
    model, cal = calibrated
    h = cal / "histograms.npz"
    line = _error(cli("calibrate", model, "--histograms", h, "--method", "percentile:99.9", "--percentile", "99.999",
                      "-o", tmp_path / "p", expect=None))  # fmt: skip
    assert "give it once" in line and "99.9" in line and "99.999" in line
    cli("calibrate", model, "--histograms", h, "--method", "percentile:99.9", "--percentile", "99.9", "-o", tmp_path / "q")
    cli("calibrate", model, "--histograms", h, "--method", "percentile", "--percentile", "99.9", "-o", tmp_path / "r")


def test_drift_refuses_scales_of_another_calibration(cli, tmp_path, calibrated, conv_data):
    """`drift --scales` of another run (other data, --tensors all) against these histograms
    said RECALIBRATE on the calibration data itself: a tensor 'not reached' that the histograms'
    selection had simply skipped, clipping judged with another run's amaxes."""
    model, cal = calibrated
    np.savez(tmp_path / "more.npz", x=np.load(conv_data)["x"] * 5)
    cli("calibrate", model, "--data", tmp_path / "more.npz", "--tensors", "all", "-o", tmp_path / "other")
    line = _error(cli("drift", model, "--histograms", cal / "histograms.npz", "--scales", tmp_path / "other" / "scales.json",
                      "--data", conv_data, expect=None))  # fmt: skip
    assert "another calibration" in line and "--tensors all" in line
    r = cli("drift", model, "--histograms", cal / "histograms.npz", "--scales", cal / "scales.json", "--data", conv_data)
    assert "RECALIBRATE" not in r.stdout  # its own scales: the same data drifts nowhere


def test_a_compare_report_is_not_overwritten_by_another_command(cli, tmp_path, calibrated, conv_data):
    """compare's per-method sets list the report beside them (../r.html): `validate --report`
    onto it was accepted, and every reader then refused the method's scales as a mixed set."""
    model, cal = calibrated
    h = cal / "histograms.npz"
    cli("compare", model, "--histograms", h, "--data", conv_data, "--methods", "mse", "--report", tmp_path / "z" / "r.html",
        "-o", tmp_path / "z" / "m")  # fmt: skip
    before = (tmp_path / "z" / "r.html").read_bytes()
    line = _error(cli("validate", model, "--scales", cal / "scales.json", "--data", conv_data,
                      "--report", tmp_path / "z" / "r.html", expect=None))  # fmt: skip
    assert "belongs to the set `calibkit compare`" in line
    assert (tmp_path / "z" / "r.html").read_bytes() == before
    scales = next((tmp_path / "z" / "m").rglob("scales.json"))
    cli("export-qdq", model, "--scales", scales, "-o", tmp_path / "q.onnx")  # the method's set still reads
