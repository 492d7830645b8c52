"""Every bad input found by hand so far (issue 10): a one-line CalibkitError, nothing
published, or it works. Real CLI, real files."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from calibkit import CalibkitError


def _one_line_error(r) -> str:
    """Exit 1, no traceback, exactly one error line (a finished progress bar may precede it)."""
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if not ln.startswith(("collecting ", "validating "))]
    assert len(lines) == 1 and lines[0].startswith("calibkit: error: "), r.stderr
    return lines[0]


def _run(cli, *args):
    return cli(*args, expect=None)


def _named_net(path, name: str):
    """x -> MatMul -> <name> -> MatMul -> Relu -> z: a quantized activation with an arbitrary name."""
    w = numpy_helper.from_array(np.eye(3, dtype=np.float32) * 0.5, "w")
    g = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], [name], name="mm"),
            helper.make_node("MatMul", [name, "w"], ["y"], name="mm2"),
            helper.make_node("Relu", ["y"], ["z"], name="relu"),
        ],
        "named",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 3])],
        [w],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, path)
    return path


@pytest.fixture
def vec_data(tmp_path):
    p = tmp_path / "v.npz"
    np.savez(p, x=np.random.default_rng(3).normal(0, 1, (40, 3)).astype(np.float32))
    return p


def test_newline_in_a_tensor_name_is_refused_before_publishing(cli, tmp_path, vec_data):
    model = _named_net(tmp_path / "nl.onnx", "bad\nname: 3f800000")
    line = _one_line_error(_run(cli, "calibrate", model, "--data", vec_data, "-o", tmp_path / "o"))
    assert "line break" in line and "bad\\nname" in line
    assert not (tmp_path / "o").exists()


def test_markup_and_tex_in_names_and_paths(cli, tmp_path, vec_data):
    model = _named_net(tmp_path / "m.onnx", "[/bad]$\\alpha$[bold]")
    out = tmp_path / "out[/bad]"
    r = cli("calibrate", model, "--data", vec_data, "-o", out)
    assert f"{out}" in r.stdout
    shown = cli("inspect", out / "scales.json")  # every tensor listed: the name must print as is
    assert "[/bad]$\\alpha$[bold]" in shown.stdout
    rep = tmp_path / "r[/x].html"
    r = cli(
        "validate",
        model,
        "--scales",
        out / "scales.json",
        "--data",
        vec_data,
        "--backends",
        "ort-int8",
        "--report",
        rep,
        expect=None,
    )
    assert r.returncode in (0, 3), r.stderr
    assert "Traceback" not in r.stderr and rep.is_file() and "[/bad]$\\alpha$[bold]" in rep.read_text()


def test_model_cache_path_is_a_directory(cli, tmp_path, conv_model, conv_data):
    out = tmp_path / "o"
    (out / "conv.cache").mkdir(parents=True)
    line = _one_line_error(_run(cli, "calibrate", conv_model, "--data", conv_data, "-o", out))
    assert "conv.cache is a directory" in line
    assert not (out / "scales.json").exists()


def test_float64_values_beyond_float32(cli, tmp_path):
    g = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "d",
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["N", 2])],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, ["N", 2])],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, tmp_path / "d.onnx")
    np.savez(tmp_path / "d.npz", x=np.array([[1e300, 1.0], [2.0, -3e299]]))
    line = _one_line_error(
        _run(cli, "calibrate", tmp_path / "d.onnx", "--data", tmp_path / "d.npz", "-o", tmp_path / "o")
    )
    assert "beyond the float32 range" in line and "'x'" in line


def test_mean_of_the_wrong_length(cli, tmp_path):
    import models
    from PIL import Image

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), i * 40, np.uint8)).save(imgs / f"{i}.png")
    line = _one_line_error(
        _run(
            cli,
            "calibrate",
            models.conv_net(tmp_path / "rgb.onnx"),
            "--data",
            imgs,
            "--mean",
            "1,2",
            "-o",
            tmp_path / "o",
        )
    )
    assert "mean must be 1 or 3" in line


def _calibrated(cli, tmp_path, conv_model, conv_data):
    out = tmp_path / "cal"
    cli("calibrate", conv_model, "--data", conv_data, "-o", out)
    return out / "scales.json"


def _edit(scales, fn):
    doc = json.loads(scales.read_text())
    fn(doc)
    shutil.rmtree(scales.parent / ".calibkit")  # hand-edited: no manifest claims it any more
    scales.write_text(json.dumps(doc))


@pytest.mark.parametrize(
    "edit,needle",
    [
        (lambda d: d["tensors"]["r1"].update(amax=1e39), "has amax"),
        (lambda d: d["tensors"]["r1"].update(scale=0.0), "has scale 0.0"),
        (lambda d: d["tensors"]["r1"].update(scale=1.0), 'delete the tensor\'s "scale" field'),
        (lambda d: d["tensors"]["r1"].update(amax=float("nan")), "has amax"),
        (lambda d: d.update(tensors=[1, 2]), "must map each tensor name"),
        (lambda d: d.update(method="entropy"), '"method" must be an object'),
        (lambda d: d["tensors"].pop("r1"), "no entry for activation 'r1'"),
    ],
)
def test_bad_scales_json_in_export_qdq(cli, tmp_path, conv_model, conv_data, edit, needle):
    scales = _calibrated(cli, tmp_path, conv_model, conv_data)
    _edit(scales, edit)
    line = _one_line_error(_run(cli, "export-qdq", conv_model, "--scales", scales, "-o", tmp_path / "q.onnx"))
    assert needle in line, line
    assert not (tmp_path / "q.onnx").exists()


def test_scales_not_covering_the_model_in_validate(cli, tmp_path, conv_model, conv_data):
    scales = _calibrated(cli, tmp_path, conv_model, conv_data)
    _edit(scales, lambda d: d["tensors"].pop("r1"))
    line = _one_line_error(
        _run(
            cli,
            "validate",
            conv_model,
            "--scales",
            scales,
            "--data",
            conv_data,
            "--backends",
            "ort-int8",
            "--report",
            tmp_path / "r.html",
        )
    )
    assert "no entry for activation 'r1'" in line


def _hist_npz(tmp_path, mutate):
    from calibkit.artifacts import histograms as store
    from calibkit.numerics.histogram import TensorHistogram

    h = TensorHistogram()
    h.update(np.linspace(-2, 3, 100, dtype=np.float32))
    p = tmp_path / "h.npz"
    store.save(
        store.HistogramSet({"t": h}, {"samples": 1, "model_fingerprint": "sha256:x", "data_fingerprint": "sha256:d"}), p
    )
    z = dict(np.load(p))
    mutate(z)
    shutil.rmtree(tmp_path / ".calibkit")
    np.savez(p, **z)
    return p


@pytest.mark.parametrize(
    "mutate,needle",
    [
        (lambda z: z.update(exp=np.array([5000], np.int32)), "range exponent 5000"),
        (lambda z: z.update(minmax=np.array([[np.nan, np.nan]])), "min/max nan/nan"),
        (lambda z: z.update(counts=z["counts"] * -1), "negative counts"),
        (
            lambda z: z.update(meta=np.frombuffer(b'{"format": "calibkit-histograms", "shards": 3}', np.uint8)),
            "metadata has the wrong types",
        ),
    ],
)
def test_corrupt_histograms(cli, tmp_path, mutate, needle):
    p = _hist_npz(tmp_path, mutate)
    line = _one_line_error(_run(cli, "inspect", p))
    assert needle in line, line


def test_merging_one_shard_twice(cli, tmp_path, conv_model, conv_data):
    cli("calibrate", conv_model, "--data", conv_data, "-o", tmp_path / "a")
    h = tmp_path / "a" / "histograms.npz"
    line = _one_line_error(_run(cli, "merge", h, h, "-o", tmp_path / "m.npz"))
    assert "already merged" in line
    assert not (tmp_path / "m.npz").exists()


@pytest.mark.parametrize("version", ["-1", "abc", "10.x", "1000.0.0", "4.0"])
def test_trt_version_that_would_not_read_back(cli, tmp_path, conv_model, conv_data, version):
    line = _one_line_error(
        _run(cli, "calibrate", conv_model, "--data", conv_data, "-o", tmp_path / "o", f"--trt-version={version}")
    )
    assert "--trt-version" in line
    assert not (tmp_path / "o").exists()


def test_every_written_cache_reads_back(cli, tmp_path, conv_model, conv_data):
    from calibkit.artifacts import trt_cache as cache

    cli("calibrate", conv_model, "--data", conv_data, "-o", tmp_path / "o", "--trt-version=8.6.1")
    c = cache.read(tmp_path / "o" / "conv.cache")
    assert c.version == 8601 and c.algorithm == "EntropyCalibration2"


def test_ort_load_error_is_whole(cli, tmp_path, conv_data):
    g = helper.make_graph(
        [helper.make_node("NoSuchOp" + "X" * 300, ["x"], ["y"], domain="com.example")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 8, 8])],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    m.ir_version = 8
    onnx.save(m, tmp_path / "bad.onnx")
    line = _one_line_error(_run(cli, "calibrate", tmp_path / "bad.onnx", "--data", conv_data, "-o", tmp_path / "o"))
    assert "X" * 300 in line and "onnxruntime_src" not in line


def test_ort_message_keeps_the_reason():
    from calibkit.sessions import ort_message

    msg = (
        "[ONNXRuntimeError] : 1 : FAIL : Load model from m.onnx failed:/onnxruntime_src/onnxruntime/core/graph/model.cc:180 "
        "onnxruntime::Model::Model(ModelProto&&, const PathString&, const IOnnxRuntimeOpSchemaRegistryList*, const logging::Logger&, "
        "const ModelOptions&) Unsupported model IR version: 12, max supported IR version: 11"
    )
    assert (
        ort_message(RuntimeError(msg))
        == "Load model from m.onnx failed: Unsupported model IR version: 12, max supported IR version: 11"
    )


def test_validate_without_scales_names_the_right_option(cli, tmp_path, conv_model, conv_data):
    line = _one_line_error(
        _run(
            cli, "validate", conv_model, "--data", conv_data, "--backends", "ort-int8", "--report", tmp_path / "r.html"
        )
    )
    assert "--scales" in line and "--histograms" not in line


def test_cache_refuses_bad_names_and_values():
    from calibkit.artifacts.trt_cache import Cache

    with pytest.raises(CalibkitError, match="line break"):
        Cache(101601, "EntropyCalibration2", {"a\u2028b": 0.1}).text()
    with pytest.raises(CalibkitError, match="finite and > 0"):
        Cache(101601, "EntropyCalibration2", {"a": float("inf")}).text()


def test_all_nan_calibration_data_publishes_nothing(cli, tmp_path, conv_model):
    np.savez(tmp_path / "nan.npz", x=np.full((4, 3, 8, 8), np.nan, np.float32))
    line = _one_line_error(_run(cli, "calibrate", conv_model, "--data", tmp_path / "nan.npz", "-o", tmp_path / "o"))
    assert "held only NaN/Inf" in line and not (tmp_path / "o").exists()


def test_labels_must_be_one_class_id_per_sample(cli, tmp_path, conv_model, conv_data):
    scales = _calibrated(cli, tmp_path, conv_model, conv_data)
    np.save(tmp_path / "lab2d.npy", np.zeros((37, 2)))
    line = _one_line_error(
        _run(
            cli,
            "validate",
            conv_model,
            "--scales",
            scales,
            "--data",
            conv_data,
            "--labels",
            tmp_path / "lab2d.npy",
            "--backends",
            "ort-int8",
            "--report",
            tmp_path / "r.html",
        )
    )
    assert "one integer class id per sample" in line


@pytest.mark.parametrize(
    "opt,val", [("--min-sqnr", "nan"), ("--min-cosine", "inf"), ("--min-cosine", "2"), ("--max-accuracy-drop", "-1")]
)
def test_gate_values_must_be_finite(cli, tmp_path, conv_model, conv_data, opt, val):
    r = cli(
        "validate",
        conv_model,
        "--data",
        conv_data,
        "--backends",
        "ort-fp16",
        "--report",
        tmp_path / "r.html",
        opt,
        val,
        expect=2,
    )
    assert opt in r.stderr and "Traceback" not in r.stderr
