"""Models users bring: dims of every kind, state/scalar inputs, activations whose first axis is
not the batch, wrong declared shapes, If/Loop subgraphs, --max-samples, --no-rebatch."""

from __future__ import annotations

import json
import subprocess
import sys

import feed_models as fm
import models
import numpy as np
import pytest

from calibkit import calibrate
from calibkit.artifacts import histograms as store
from calibkit.collect.host import collect
from calibkit.data import FeedStats, open_source, run_batches
from calibkit.data.options import FeedOptions
from calibkit.errors import CalibkitError
from calibkit.graph.batch_axes import activation_axes, parse_batch_axes
from calibkit.graph.model import input_specs, load


def _cal(cli, model, data, out, *extra, expect=0):
    return cli("calibrate", model, "--data", data, "-o", out, "--device", "cpu", *extra, expect=expect)


def _meta(out):
    return store.load(out / "histograms.npz").meta


@pytest.mark.parametrize(
    "dims,used",
    [
        ([-1, 3], 10),
        ([0, 3], 10),
        ([None, 3], 10),
        (["N", 3], 10),
        ([-1, -1], 10),
        ([4, 3], 8),
        ([1, 3], 10),
    ],
)
def test_every_kind_of_dim_through_the_cli(tmp_path, cli, dims, used):
    # relu_net accepts an empty batch: a feeder that emitted one would loop forever (the hang)
    model = fm.relu_net(tmp_path / "m.onnx", dims)
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).normal(size=(10, 3)).astype(np.float32))
    cli.cwd = tmp_path
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "calibkit",
            "calibrate",
            str(model),
            "--data",
            str(tmp_path / "d.npz"),
            "-o",
            str(tmp_path / "o"),
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    meta = _meta(tmp_path / "o")
    assert meta["samples"] - meta["dropped_samples"] == used


def test_run_batch_never_below_one():
    from calibkit.graph.model import InputSpec

    spec = [InputSpec("x", np.dtype(np.float32), (None, 3))]
    src = open_source([{"x": np.ones((5, 3), np.float32)}, {"x": np.ones((0, 3), np.float32)}], spec)
    out = list(run_batches(src, spec, lambda: 0, FeedStats()))
    assert [b.samples for b in out] == [1] * 5


def test_sample_axes_from_the_model(tmp_path):
    specs = {s.name: s.axis for s in input_specs(load(fm.state_net(tmp_path / "s.onnx")))}
    assert specs == {"x": 0, "state": 1, "sr": None, "h": None}
    specs = {s.name: s.axis for s in input_specs(load(tmp_path / "s.onnx"), {"h": 0, "state": 1})}
    assert specs["h"] == 0
    assert parse_batch_axes(["state:1,sr:none", "h:-1"]) == {"state": 1, "sr": None, "h": -1}
    with pytest.raises(CalibkitError, match="not a model input"):
        input_specs(load(tmp_path / "s.onnx"), {"nope": 0})


def _state_data(path, n=10, seed=0):
    rng = np.random.default_rng(seed)
    np.savez(
        path,
        x=rng.normal(size=(n, 4)).astype(np.float32),
        state=rng.normal(size=(2, n, 4)).astype(np.float32),
        sr=np.array(16000, np.int64),
        h=rng.normal(size=(1, 4)).astype(np.float32),
    )
    return path


def test_state_and_scalar_inputs_any_batch_size_same_bytes(tmp_path, cli):
    model = fm.state_net(tmp_path / "s.onnx")
    data = _state_data(tmp_path / "d.npz")
    blobs = []
    for bs in ("1", "3", "64"):
        _cal(cli, model, data, tmp_path / bs, "--batch-size", bs)
        blobs.append(((tmp_path / bs / "histograms.npz").read_bytes(), (tmp_path / bs / "s.cache").read_bytes()))
    assert blobs[0] == blobs[1] == blobs[2]
    _cal(cli, model, data, tmp_path / "explicit", "--batch-axis", "state:1", "--batch-axis", "sr:none,h:none")
    assert (tmp_path / "explicit" / "s.cache").read_bytes() == blobs[0][1]
    hs = store.load(tmp_path / "1" / "histograms.npz")
    assert hs.samples == 10
    assert hs.tensors["h"].count == 4 * 10  # a shared input counts once per sample
    r = _cal(cli, model, data, tmp_path / "bad", "--batch-axis", "state:0", expect=1)
    assert r.stderr.strip().count("\n") == 0 and "state" in r.stderr


def test_activations_reduced_whole(tmp_path):
    """A Transpose output [2, N, 5, 4]: max and count equal NumPy over all values; a 0-d ReduceMax calibrates."""
    model = fm.transpose_net(tmp_path / "t.onnx")
    x = np.random.default_rng(1).normal(size=(9, 8, 5)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x)
    r = calibrate(model, data=tmp_path / "d.npz", output_dir=tmp_path / "o", batch_size=4, device="cpu")
    tr = np.maximum(x.reshape(9, 2, 4, 5).transpose(1, 0, 3, 2), 0)
    h = r.histograms.tensors["relu"]
    assert h.count == tr.size and h.max == float(tr.max())
    assert r.histograms.tensors["mx"].count == 9  # one value per sample
    assert activation_axes(load(model), input_specs(load(model)), ["tr", "mx"]) == {"tr": 1, "mx": None}


def test_padding_removed_along_each_tensors_batch_axis(tmp_path):
    """Padded runs (as on CUDA), forced on the CPU provider: same histograms as unpadded."""
    model = load(models.conv_net(tmp_path / "c.onnx"))
    x = np.random.default_rng(2).normal(size=(11, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x)
    specs = input_specs(model)
    plain = collect(model, open_source(tmp_path / "d.npz", specs), 4, device="cpu", pad=False)
    padded = collect(model, open_source(tmp_path / "d.npz", specs), 4, device="cpu", pad=True)
    assert padded.padded
    for name, h in plain.tensors.items():
        assert np.array_equal(h.counts, padded.tensors[name].counts) and h.count == padded.tensors[name].count, name
    t = load(fm.transpose_net(tmp_path / "t.onnx"))
    np.savez(tmp_path / "t.npz", x=np.ones((5, 8, 5), np.float32))
    assert not collect(
        t, open_source(tmp_path / "t.npz", input_specs(t)), 4, device="cpu", pad=True
    ).padded  # 0-d mx: no padding


def test_wrong_declared_output_rank(tmp_path, cli):
    model = fm.wrong_rank_net(tmp_path / "w.onnx")
    np.savez(tmp_path / "d.npz", x=np.ones((7, 3), np.float32))
    _cal(cli, model, tmp_path / "d.npz", tmp_path / "o", "--batch-size", "2")
    assert _meta(tmp_path / "o")["samples"] == 7


@pytest.mark.parametrize("sr,taken,skipped", [(16000, {"t_relu", "t_out"}, "e_out"), (8000, {"e_out"}, "t_relu")])
def test_if_with_constant_condition_is_inlined(tmp_path, cli, sr, taken, skipped):
    model = fm.if_net(tmp_path / "i.onnx")
    np.savez(
        tmp_path / "d.npz", x=np.random.default_rng(3).normal(size=(6, 3)).astype(np.float32), sr=np.array(sr, np.int64)
    )
    _cal(cli, model, tmp_path / "d.npz", tmp_path / "o")
    scales = json.loads((tmp_path / "o" / "scales.json").read_text())
    assert taken <= set(scales["tensors"])
    assert "never takes" in scales["uncalibrated"][skipped]


def test_if_condition_changing_is_an_error(tmp_path):
    model = fm.if_net(tmp_path / "i.onnx")
    feeds = [
        {"x": np.ones((2, 3), np.float32), "sr": np.array(16000)},
        {"x": np.ones((2, 3), np.float32), "sr": np.array(8000)},
    ]
    with pytest.raises(CalibkitError, match="If condition"):
        calibrate(model, data=feeds, output_dir=tmp_path / "o", device="cpu")


def test_loop_body_listed_not_dropped(tmp_path, cli):
    model = fm.loop_net(tmp_path / "l.onnx")
    np.savez(tmp_path / "d.npz", x=np.ones((4, 3), np.float32))
    _cal(cli, model, tmp_path / "d.npz", tmp_path / "o")
    scales = json.loads((tmp_path / "o" / "scales.json").read_text())
    assert {"acc", "y"} <= set(scales["tensors"])
    assert set(scales["uncalibrated"]) == {"body_tanh", "acc_out"}
    assert "inside Loop body of node 'loop'" in scales["uncalibrated"]["body_tanh"]
    assert _meta(tmp_path / "o")["uncalibrated"] == scales["uncalibrated"]


def test_max_samples_stops_an_endless_loader(tmp_path, cli, conv_model, conv_data):
    loader = tmp_path / "endless.py"
    loader.write_text(
        "import numpy as np\ndef load_data():\n    while True:\n        yield {'x': np.ones((3, 3, 8, 8), np.float32)}\n"
    )
    _cal(cli, conv_model, f"{loader}:load_data", tmp_path / "o", "--max-samples", "7")
    assert _meta(tmp_path / "o")["samples"] == 7
    _cal(cli, conv_model, conv_data, tmp_path / "o2", "--max-samples", "5")
    meta = _meta(tmp_path / "o2")
    assert meta["samples"] == 5 and meta["max_samples"] == 5


def test_zero_d_array_from_a_loader_is_one_line(tmp_path, cli, conv_model):
    loader = tmp_path / "scalar.py"
    loader.write_text("import numpy as np\ndef load_data():\n    yield {'x': np.float32(1.0)}\n")
    r = _cal(cli, conv_model, f"{loader}:load_data", tmp_path / "o", expect=1)
    assert "input 'x' is a 0-d scalar" in r.stderr and "Traceback" not in r.stderr


def test_no_rebatch_runs_feeds_as_given(tmp_path):
    model = fm.state_net(tmp_path / "s.onnx")
    rng = np.random.default_rng(4)
    feeds = [
        {
            "x": rng.normal(size=(n, 4)).astype(np.float32),
            "state": rng.normal(size=(2, n, 4)).astype(np.float32),
            "sr": np.array(1, np.int64),
            "h": np.ones((1, 4), np.float32),
        }
        for n in (3, 1, 5)
    ]
    specs = input_specs(load(model))
    stats = FeedStats()
    out = list(run_batches(open_source(feeds, specs), specs, 2, stats, FeedOptions(rebatch=False)))
    assert [b.samples for b in out] == [3, 1, 5] and stats.samples == 9
    r = calibrate(model, data=feeds, output_dir=tmp_path / "o", device="cpu", feed=FeedOptions(rebatch=False))
    assert r.histograms.samples == 9
