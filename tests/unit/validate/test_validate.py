"""validate / compare: metrics values, streaming, reports, gates, bad input."""

from __future__ import annotations

import json
import math
import re

import models
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from calibkit.data import Preprocess
from calibkit.errors import CalibkitError
from calibkit.graph.model import load
from calibkit.sessions import session
from calibkit.validate import fp16
from calibkit.validate.backends import Candidate
from calibkit.validate.engine import evaluate
from calibkit.validate.metrics import Latency, OutputMetrics


def test_output_metrics_values_and_streaming():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(40, 10)).astype(np.float32)
    cand = ref + rng.normal(scale=0.05, size=ref.shape).astype(np.float32)
    cand[3] = ref[3] * 0 + ref[3].min()  # one sample with another argmax
    whole, parts = OutputMetrics(), OutputMetrics()
    whole.add(ref, cand)
    for a, b in zip(np.array_split(ref, 7), np.array_split(cand, 7)):
        parts.add(a, b)
    s, p = whole.summary(), parts.summary()
    d = cand.astype(np.float64) - ref
    assert s["max_abs_err"] == pytest.approx(np.abs(d).max(), rel=1e-6)
    assert s["mean_abs_err"] == pytest.approx(np.abs(d).mean(), rel=1e-9)
    assert s["sqnr_db"] == pytest.approx(10 * np.log10((ref.astype(np.float64) ** 2).sum() / (d**2).sum()), rel=1e-9)
    cos = (ref.astype(np.float64) * cand).sum() / np.sqrt(
        (ref.astype(np.float64) ** 2).sum() * (cand.astype(np.float64) ** 2).sum()
    )
    assert s["cosine"] == pytest.approx(cos, rel=1e-9)
    assert s["top1_agreement"] == pytest.approx((ref.argmax(1) == cand.argmax(1)).mean())
    assert s["top1_agreement"] < 1.0 and s["top5_agreement"] >= s["top1_agreement"]
    assert s["abs_err_p99"] >= np.quantile(np.abs(d), 0.99) * (1 - 1e-3)
    for k in s:
        assert s[k] == pytest.approx(p[k], rel=1e-9), k  # batching does not matter


def test_nonfinite_candidate_values_are_counted_not_fatal():
    ref = np.ones((4, 3), np.float32)
    cand = ref.copy()
    cand[0, 0], cand[1, 1] = np.nan, np.inf
    m = OutputMetrics()
    m.add(ref, cand)
    s = m.summary()
    assert s["nonfinite"] == 2 and math.isfinite(s["cosine"]) and s["max_abs_err"] == 0.0


def test_latency_summary():
    lat = Latency()
    for t in [0.010] * 98 + [0.5, 0.5]:
        lat.add(t, 4)
    s = lat.summary()
    assert (
        9.95 <= s["median_ms"] <= 10.05
        and s["p99_ms"] >= 490
        and s["throughput_sps"] == pytest.approx(400 / sum([0.010] * 98 + [0.5, 0.5]))
    )


def test_fp16_emulation_rounds_through_float16(tmp_path):
    path = models.scale_net(tmp_path / "s.onnx", factor=1.0 / 3.0)
    em = fp16.emulate(load(path))
    onnx.checker.check_model(em)
    x = np.array([[1.1, 2.2, 3.3], [-1, 7.7, 1e-3]], np.float32)
    got = ort.InferenceSession(em.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    h = lambda a: np.asarray(a, np.float32).astype(np.float16).astype(np.float32)  # noqa: E731
    want = h(h(np.maximum(h(x @ np.eye(3, dtype=np.float32)), 0)) * h(np.float32(1 / 3)))
    np.testing.assert_array_equal(got, want)


def test_candidate_with_other_output_shape_is_refused(tmp_path):
    a = models.conv_net(tmp_path / "a.onnx")
    wrong = onnx.load(str(tmp_path / "a.onnx"))
    # the same inputs, but the Gemm replaced by a Flatten -> different output shape
    g = wrong.graph
    fc = next(n for n in g.node if n.op_type == "Gemm")
    fc.op_type, fc.input[:] = "Identity", ["flat"]
    del fc.attribute[:]
    g.output[0].type.tensor_type.shape.dim[1].dim_value = 8
    cand = Candidate("weird", "ort-int8", session(wrong), ["y"])
    data = [{"x": np.zeros((2, 3, 8, 8), np.float32)}]
    with pytest.raises(CalibkitError, match="output 'y' has shape"):
        evaluate(load(a), data, [cand])


def test_validate_demo_end_to_end(cli, tmp_path):
    r = cli("validate")
    assert "unavailable: trt-int8: TensorRT is not installed" in r.stdout
    doc = json.loads((tmp_path / "calibkit-demo/report.results.json").read_text())
    labels = [c["label"] for c in doc["candidates"]]
    assert labels[0] == "ort-fp32" and {"ort-int8 (entropy)", "ort-fp16"} <= set(labels)
    assert doc["unavailable"][0]["backend"] == "trt-int8"
    by = {c["label"]: c for c in doc["candidates"]}
    assert by["ort-fp32"]["accuracy"] > 98.0 and doc["data"]["samples"] == 497
    assert abs(by["ort-int8 (entropy)"]["accuracy_drop_pp"]) < 1.5
    assert by["ort-fp16"]["outputs"]["logits"]["sqnr_db"] > by["ort-int8 (entropy)"]["outputs"]["logits"]["sqnr_db"]
    layers = by["ort-int8 (entropy)"]["layers"]
    assert set(layers) == {"image", "relu1", "relu2", "pool", "features"}
    assert all(v["local_sqnr_db"] > 20 for v in layers.values())
    html = (tmp_path / "calibkit-demo/report.html").read_text()
    assert "data:image/png;base64," in html and "PASS" in html
    assert not re.search(r'(src|href)\s*=\s*"(https?:)?//', html)  # self-contained: nothing fetched


def test_bare_validate_keeps_the_users_demo_calibration(cli, tmp_path):
    """`calibkit calibrate --method percentile` then bare `calibkit validate`: the user's demo
    scales are validated, not recalibrated over with entropy."""
    cli("calibrate", "--method", "percentile")
    before = (tmp_path / "calibkit-demo/scales.json").read_bytes()
    r = cli("validate")
    assert "already in calibkit-demo/scales.json (method percentile" in r.stderr
    assert (tmp_path / "calibkit-demo/scales.json").read_bytes() == before
    labels = [c["label"] for c in json.loads((tmp_path / "calibkit-demo/report.results.json").read_text())["candidates"]]
    assert "ort-int8 (percentile)" in labels


def test_gate_failure_exits_3_and_still_writes(cli, tmp_path):
    cli("calibrate")
    r = cli("validate", "--min-cosine", "0.9999999", "--report", "gated.html", expect=3)
    assert "failed the gates" in r.stderr
    doc = json.loads((tmp_path / "gated.results.json").read_text())
    assert doc["pass"] is False and any("cosine" in f for c in doc["candidates"] for f in c["failures"])
    assert "FAIL" in (tmp_path / "gated.html").read_text()


def test_compare_ranks_methods_with_metric_fn(cli, conv_model, conv_data, tmp_path):
    cli("calibrate", conv_model, "--data", conv_data, "-o", tmp_path / "cal")
    x = np.random.default_rng(3).normal(size=(50, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "val.npz", x=x)
    ref = ort.InferenceSession(str(conv_model), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.save(tmp_path / "labels.npy", ref.argmax(1))
    (tmp_path / "metric.py").write_text(
        "import numpy as np\ndef metric(outputs, labels):\n    return (outputs['y'].argmax(1) == labels).astype(float)\n"
    )
    for extra in (
        ["--labels", tmp_path / "labels.npy"],
        ["--metric", f"{tmp_path / 'metric.py'}:metric", "--labels", tmp_path / "labels.npy"],
    ):
        cli(
            "compare",
            conv_model,
            "--histograms",
            tmp_path / "cal/histograms.npz",
            "--data",
            tmp_path / "val.npz",
            *extra,
            "--methods",
            "entropy,percentile:40,minmax",
            "--report",
            tmp_path / "cmp.html",
        )
        doc = json.loads((tmp_path / "cmp.results.json").read_text())
        cands = doc["candidates"]
        assert cands[0]["accuracy"] == 100.0
        keys = [(c["accuracy"], c["outputs"]["y"]["sqnr_db"]) for c in cands[1:]]
        assert keys == sorted(keys, reverse=True)  # accuracy first, then output SQNR
        assert cands[-1]["method"] == "percentile:40"  # clips 60% of every tensor
        assert cands[-1]["outputs"]["y"]["sqnr_db"] < cands[1]["outputs"]["y"]["sqnr_db"] - 6
        assert doc["best"] == cands[1]["label"]


def test_fp16_overflow_reported_not_crash(cli, tmp_path):
    model = models.scale_net(tmp_path / "s.onnx", factor=1e5)
    np.savez(tmp_path / "v.npz", x=np.array([[1.0, 0.5, 2.0], [0.1, 0.2, 0.3]], np.float32))
    r = cli(
        "validate",
        model,
        "--data",
        tmp_path / "v.npz",
        "--backends",
        "ort-fp16",
        "--emulate-fp16",
        "--report",
        tmp_path / "r.html",
        expect=3,
    )
    doc = json.loads((tmp_path / "r.results.json").read_text())
    fp = doc["candidates"][1]
    assert fp["outputs"]["y"]["nonfinite"] > 0 and not fp["pass"] and "NaN/Inf" in fp["failures"][0]
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize(
    "args,match",
    [
        (["--data", "wrong.npz"], "axis 1"),
        (["--data", "val.npz", "--labels", "labels_short.npy"], "labels"),
        (["--data", "val.npz", "--backends", "ort-int9"], "unknown backend 'ort-int9'"),
        (["--data", "val.npz", "--scales", "other/scales.json"], "another model"),
        (["--data", "val.npz", "--labels", "labels_bad.npy"], "not a readable .npy"),
    ],
)
def test_validate_bad_input(cli, tmp_path, conv_model, conv_data, args, match):
    cli("calibrate", conv_model, "--data", conv_data, "-o", tmp_path / "cal")
    other = models.conv_net(tmp_path / "other.onnx", seed=4)
    cli("calibrate", other, "--data", conv_data, "-o", tmp_path / "other")
    np.savez(tmp_path / "val.npz", x=np.zeros((6, 3, 8, 8), np.float32))
    np.savez(tmp_path / "wrong.npz", x=np.zeros((6, 1, 8, 8), np.float32))
    np.save(tmp_path / "labels_short.npy", np.zeros(5, np.int64))
    (tmp_path / "labels_bad.npy").write_text("nope")
    full = ["--scales", tmp_path / "cal/scales.json"] if "--scales" not in args else []
    r = cli("validate", conv_model, *full, *args, "--report", tmp_path / "r.html", expect=1)
    assert match in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "r.html").exists() and not (tmp_path / "r.results.json").exists()


def test_every_validation_command_has_help(cli):
    for cmd in ("validate", "compare", "export-qdq"):
        assert "Usage:" in cli(cmd, "--help").stdout


def test_preprocess_is_used_for_validation_images(tmp_path):
    from calibkit import demo

    ev = evaluate(
        load(demo.MODEL), demo.VAL, [], Preprocess.from_file(demo.PREPROCESS), labels=str(demo.VAL / "labels.npy")
    )
    assert ev.samples == 497 and ev.reference.correct / ev.samples > 0.98


def test_validation_memory_does_not_grow_with_the_data(tmp_path, conv_model, conv_data):
    import tracemalloc

    from calibkit.artifacts.scales import read
    from calibkit.calibration import calibrate
    from calibkit.validate.backends import make

    calibrate(conv_model, conv_data, output_dir=tmp_path / "cal")
    table = read(tmp_path / "cal/scales.json")
    model = load(conv_model)
    cand = make("ort-int8", model, ["y"], tmp_path, table.amax())
    peaks = []
    for n in (64, 512):
        np.savez(tmp_path / f"v{n}.npz", x=np.random.default_rng(n).normal(size=(n, 3, 8, 8)).astype(np.float32))
        tracemalloc.start()
        evaluate(model, str(tmp_path / f"v{n}.npz"), [cand])
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < peaks[0] * 1.5  # 8x the samples, (nearly) the same Python memory
