"""validate / compare / build take calibrate's feed options (--batch-axis, --no-rebatch,
--max-samples): a model whose only inputs are a state [2, N, 4] (samples on axis 1) and a 0-d
scalar is counted by its samples, labels and per-sample scores line up."""

from __future__ import annotations

import json

import feed_models as fm
import numpy as np
import onnxruntime as ort
import pytest

from calibkit.graph.model import input_specs, load
from calibkit.trt.feed import CalibrationFeed

N = 10
LENIENT = ("--min-cosine", "-1", "--max-accuracy-drop", "100")


@pytest.fixture
def state_model(tmp_path):
    model = fm.state_scalar_net(tmp_path / "s.onnx")
    state = np.random.default_rng(1).normal(0, 1, (2, N, 4)).astype(np.float32)
    sr = np.array(16000, np.int64)
    np.savez(tmp_path / "d.npz", state=state, sr=sr)
    y = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(["y"], {"state": state, "sr": sr})[0]
    labels = y.argmax(1)
    assert len(set(labels.tolist())) > 1  # not one class for all: a misaligned label shows
    np.save(tmp_path / "labels.npy", labels)
    return model, state, labels


def _doc(path):
    return json.loads(path.read_text())


def _by_label(doc):
    return {c["label"].split(" ")[0]: c for c in doc["candidates"]}


def test_validate_counts_samples_on_the_state_axis_and_labels_line_up(state_model, tmp_path, cli):
    model, state, labels = state_model
    cli(
        "calibrate",
        model,
        "--data",
        tmp_path / "d.npz",
        "--batch-axis",
        "state:1",
        "-o",
        tmp_path / "cal",
        "--device",
        "cpu",
    )
    args = (
        "validate",
        model,
        "--scales",
        tmp_path / "cal" / "scales.json",
        "--data",
        tmp_path / "d.npz",
        "--backends",
        "ort-int8,ort-fp16",
        "--device",
        "cpu",
        "--batch-axis",
        "state:1",
        "--batch-size",
        "4",
        *LENIENT,
    )
    cli(*args, "--labels", tmp_path / "labels.npy", "--report", tmp_path / "r.html")
    doc = _doc(tmp_path / "r.results.json")
    assert doc["data"]["samples"] == N
    assert doc["data"]["feed"]["batch_axes"] == {"state": 1, "sr": None}
    cands = _by_label(doc)
    assert cands["ort-fp32"]["accuracy"] == 100.0  # every label met its own sample
    assert cands["ort-fp32"]["latency"]["batches"] == 3  # 4 + 4 + 2 samples
    assert set(cands) == {"ort-fp32", "ort-int8", "ort-fp16"}
    # labels of the wrong length: a one-line user error
    for wrong in (labels[:2], np.concatenate([labels, labels[:1]])):
        np.save(tmp_path / "bad.npy", wrong)
        r = cli(*args, "--labels", tmp_path / "bad.npy", "--report", tmp_path / "bad.html", expect=1)
        assert (
            f"have {len(wrong)} entries" in r.stderr
            and "must match one to one" in r.stderr
            and "Traceback" not in r.stderr
        )
    # --max-samples: the first samples and their labels
    cli(*args, "--labels", tmp_path / "labels.npy", "--max-samples", "6", "--report", tmp_path / "m.html")
    doc = _doc(tmp_path / "m.results.json")
    assert (
        doc["data"]["samples"] == 6
        and doc["data"]["feed"]["limited"]
        and _by_label(doc)["ort-fp32"]["accuracy"] == 100.0
    )
    # compare takes the same options
    cli(
        "compare",
        model,
        "--histograms",
        tmp_path / "cal" / "histograms.npz",
        "--methods",
        "minmax",
        "--data",
        tmp_path / "d.npz",
        "--batch-axis",
        "state:1",
        "--labels",
        tmp_path / "labels.npy",
        "--device",
        "cpu",
        "--report",
        tmp_path / "c.html",
        *LENIENT,
    )
    doc = _doc(tmp_path / "c.results.json")
    assert doc["data"]["samples"] == N and _by_label(doc)["ort-fp32"]["accuracy"] == 100.0


def test_validate_metric_scores_per_sample(state_model, tmp_path, cli):
    model, state, labels = state_model
    metric = tmp_path / "m.py"
    metric.write_text(
        "import numpy as np\ndef metric(outputs, labels):\n    return (outputs['y'].argmax(1) == labels).astype(float)\n"
    )
    cli(
        "validate",
        model,
        "--data",
        tmp_path / "d.npz",
        "--backends",
        "ort-fp16",
        "--device",
        "cpu",
        "--batch-axis",
        "state:1",
        "--batch-size",
        "3",
        "--metric",
        f"{metric}:metric",
        "--labels",
        tmp_path / "labels.npy",
        "--report",
        tmp_path / "r.html",
        *LENIENT,
    )
    doc = _doc(tmp_path / "r.results.json")
    assert doc["data"]["samples"] == N and _by_label(doc)["ort-fp32"]["accuracy"] == 100.0


def test_validate_no_rebatch_runs_the_loaders_feeds(state_model, tmp_path, cli):
    model, state, labels = state_model
    loader = tmp_path / "feeds.py"
    loader.write_text(
        "import numpy as np\n"
        f"state = np.load({str(tmp_path / 'd.npz')!r})['state']\n"
        "def load_data():\n"
        "    start = 0\n"
        "    for n in (3, 1, 5, 1):\n"
        "        yield {'state': state[:, start:start + n], 'sr': np.array(16000, np.int64)}\n"
        "        start += n\n"
    )
    args = (
        "validate",
        model,
        "--data",
        f"{loader}:load_data",
        "--backends",
        "ort-fp16",
        "--device",
        "cpu",
        "--batch-axis",
        "state:1",
        "--batch-size",
        "2",
        "--labels",
        tmp_path / "labels.npy",
        *LENIENT,
    )
    for flags, batches in (((), 5), (("--no-rebatch",), 4)):
        report = tmp_path / f"r{batches}.html"
        cli(*args, *flags, "--report", report)
        doc = _doc(report.with_suffix(".results.json"))
        assert doc["data"]["samples"] == N and doc["data"]["feed"]["rebatch"] == (not flags)
        assert _by_label(doc)["ort-fp32"]["latency"]["batches"] == batches
        assert _by_label(doc)["ort-fp32"]["accuracy"] == 100.0
    np.save(tmp_path / "short.npy", labels[:7])  # the loader's length is known only at the end
    r = cli(*args, "--no-rebatch", "--labels", tmp_path / "short.npy", "--report", tmp_path / "s.html", expect=1)
    assert "have 7 entries" in r.stderr and "must match one to one" in r.stderr


def test_validate_rejects_a_batch_axis_of_no_input(state_model, tmp_path, cli):
    model, _, _ = state_model
    r = cli(
        "validate",
        model,
        "--data",
        tmp_path / "d.npz",
        "--backends",
        "ort-fp16",
        "--batch-axis",
        "nope:1",
        "--report",
        tmp_path / "r.html",
        expect=1,
    )
    assert "--batch-axis names 'nope'" in r.stderr


def test_build_feed_options(state_model, tmp_path, cli):
    model, _, _ = state_model
    cli(
        "calibrate",
        model,
        "--data",
        tmp_path / "d.npz",
        "--batch-axis",
        "state:1",
        "-o",
        tmp_path / "cal",
        "--device",
        "cpu",
    )
    base = (
        "build",
        model,
        "--engine",
        tmp_path / "e.plan",
        "--int8",
        "--cache",
        tmp_path / "cal" / "s.cache",
        "--print-trtexec",
        "--trt-major",
        "10",
    )
    r = cli(*base, "--batch-axis", "state:1", expect=1)
    assert "give --data or drop them" in r.stderr
    r = cli(*base, "--data", tmp_path / "d.npz", "--batch-axis", "bad:1", expect=1)
    assert "--batch-axis names 'bad'" in r.stderr
    # TensorRT's calibration feed cuts batches by the feed's own sample count
    specs = input_specs(load(model), {"state": 1})
    feed = CalibrationFeed(specs, "EntropyCalibration2", batch_size=4, data=str(tmp_path / "d.npz"))
    got = list(feed._iterate())
    assert [f["state"].shape for f in got] == [(2, 4, 4), (2, 4, 4)] and feed.skipped == 2
    capped = CalibrationFeed(specs, "EntropyCalibration2", batch_size=4, data=str(tmp_path / "d.npz"), max_samples=5)
    assert len(list(capped._iterate())) == 1 and capped.skipped == 1
