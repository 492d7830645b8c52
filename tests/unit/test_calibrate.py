"""End to end through the real CLI: outputs, determinism, shards, reuse, bad input."""

from __future__ import annotations

import json
import os

import models
import numpy as np
import pytest

from calibkit.artifacts import histograms as store
from calibkit.artifacts import trt_cache as cache


def cache_bytes(d, name="conv"):
    return (d / f"{name}.cache").read_bytes()


def test_calibrate_writes_all_outputs(cli, conv_model, conv_data, tmp_path):
    r = cli(
        "calibrate", conv_model, "--data", conv_data, "--method", "entropy", "--tensors", "all", "-o", tmp_path / "out"
    )
    out = tmp_path / "out"
    c = cache.read(out / "conv.cache")
    assert c.algorithm == "EntropyCalibration2" and c.version == 101601
    assert list(c.scales) == ["x", "c1", "r1", "c2", "add", "r2", "gap", "flat", "y"]
    scales = json.loads((out / "scales.json").read_text())
    assert scales["format"] == "calibkit-scales" and scales["version"] == 1
    assert scales["method"] == {"name": "entropy", "params": {"levels": 128, "start_bin": 128}}
    assert scales["model"]["fingerprint"].startswith("sha256:") and scales["data"]["samples"] == 37
    t = scales["tensors"]["x"]
    assert t["count"] == 37 * 3 * 64 and t["nan"] == 0 and t["max"] == pytest.approx(9.0)
    for name, s in c.scales.items():
        assert s == np.float32(scales["tensors"][name]["amax"] / 127)
    assert "wrote cache" in r.stdout and "samples/s" in r.stderr


def test_cache_identical_for_any_batch_size(cli, conv_model, conv_data, tmp_path):
    outs = []
    for bs in (1, 3, 16, 64):
        d = tmp_path / f"bs{bs}"
        cli("calibrate", conv_model, "--data", conv_data, "--batch-size", bs, "-o", d)
        outs.append((cache_bytes(d), (d / "histograms.npz").read_bytes()))
    assert len(set(outs)) == 1


def test_shards_merge_to_the_same_cache(cli, conv_model, conv_data, tmp_path):
    x = np.load(conv_data)["x"]
    np.savez(tmp_path / "s0.npz", x=x[:20])
    np.savez(tmp_path / "s1.npz", x=x[20:])
    cli("calibrate", conv_model, "--data", conv_data, "-o", tmp_path / "whole")
    cli("calibrate", conv_model, "--data", tmp_path / "s0.npz", "-o", tmp_path / "a", "--batch-size", 7)
    cli("calibrate", conv_model, "--data", tmp_path / "s1.npz", "-o", tmp_path / "b", "--batch-size", 2)
    cli("merge", tmp_path / "b/histograms.npz", tmp_path / "a/histograms.npz", "-o", tmp_path / "m1.npz")
    cli("merge", tmp_path / "a/histograms.npz", tmp_path / "b/histograms.npz", "-o", tmp_path / "m2.npz")
    assert (tmp_path / "m1.npz").read_bytes() == (tmp_path / "m2.npz").read_bytes()
    cli("calibrate", conv_model, "--histograms", tmp_path / "m1.npz", "-o", tmp_path / "merged")
    assert cache_bytes(tmp_path / "whole") == cache_bytes(tmp_path / "merged")


def test_rethreshold_from_histograms_runs_no_inference(cli, conv_model, conv_data, tmp_path):
    cli("calibrate", conv_model, "--data", conv_data, "-o", tmp_path / "o")
    hs = tmp_path / "o/histograms.npz"
    before = hs.read_bytes()
    r = cli(
        "calibrate",
        conv_model,
        "--histograms",
        hs,
        "--method",
        "percentile",
        "--percentile",
        "99.9",
        "-o",
        tmp_path / "p",
    )
    assert "no inference" in r.stdout and not (tmp_path / "p/histograms.npz").exists()
    p = json.loads((tmp_path / "p/scales.json").read_text())
    assert p["method"] == {"name": "percentile", "params": {"percentile": 99.9}}
    mm = cli("calibrate", conv_model, "--histograms", hs, "--method", "minmax", "-o", tmp_path / "m")
    assert mm.returncode == 0
    assert cache.read(tmp_path / "m/conv.cache").scales["x"] == np.float32(9.0 / 127)
    assert cache.read(tmp_path / "p/conv.cache").scales["x"] < np.float32(9.0 / 127)
    assert hs.read_bytes() == before


def test_reuse_when_fingerprints_match(cli, conv_model, conv_data, tmp_path):
    out = tmp_path / "o"
    first = cli("calibrate", conv_model, "--data", conv_data, "-o", out)
    assert "reused" not in first.stdout
    stamp = (out / "histograms.npz").stat().st_mtime_ns
    again = cli("calibrate", conv_model, "--data", conv_data, "-o", out, "--method", "mse")
    assert "reused" in again.stdout and (out / "histograms.npz").stat().st_mtime_ns == stamp
    forced = cli("calibrate", conv_model, "--data", conv_data, "-o", out, "--recollect")
    assert "reused" not in forced.stdout
    x = np.load(conv_data)["x"]
    np.savez(conv_data, x=x * 2)  # the data changed: collect again
    changed = cli("calibrate", conv_model, "--data", conv_data, "-o", out)
    assert "reused" not in changed.stdout
    pre = cli(
        "calibrate", conv_model, "--data", conv_data, "-o", out, "--scale", "0.5"
    )  # image preprocessing: not applied to .npz
    assert "reused" in pre.stdout


def test_histograms_from_another_model_refused(cli, conv_model, conv_data, tmp_path):
    cli("calibrate", conv_model, "--data", conv_data, "-o", tmp_path / "o")
    other = models.conv_net(tmp_path / "other.onnx", seed=5)
    r = cli("calibrate", other, "--histograms", tmp_path / "o/histograms.npz", "-o", tmp_path / "x", expect=1)
    assert "another model" in r.stderr and "--force" in r.stderr and "Traceback" not in r.stderr
    cli("calibrate", other, "--histograms", tmp_path / "o/histograms.npz", "-o", tmp_path / "x", "--force")


def test_multi_input_model_skips_integer_tensors(cli, tmp_path):
    model = models.two_input_net(tmp_path / "two.onnx")
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "d.npz",
        a=rng.normal(size=(10, 4)).astype(np.float32),
        b=rng.normal(size=(10, 4)).astype(np.float32),
        idx=np.ones((10, 1), np.int64),
    )
    cli("calibrate", model, "--data", tmp_path / "d.npz", "-o", tmp_path / "o")
    names = list(cache.read(tmp_path / "o/two.cache").scales)
    assert names == ["a", "b", "mm", "sum", "idxf", "out"]


def test_nan_activations_reported_never_written(cli, tmp_path):
    model = models.log_net(tmp_path / "log.onnx")
    np.savez(tmp_path / "d.npz", x=np.array([[1.0, -1.0, 0.0], [2.0, 3.0, 0.5]], np.float32))
    r = cli("calibrate", model, "--data", tmp_path / "d.npz", "-o", tmp_path / "o")
    assert "NaN/Inf" in r.stdout and "y" in r.stdout
    s = json.loads((tmp_path / "o/scales.json").read_text())["tensors"]["y"]
    assert s["nan"] == 1 and s["inf"] == 1 and s["count"] == 4
    assert all(np.isfinite(v) and v > 0 for v in cache.read(tmp_path / "o/log.cache").scales.values())


@pytest.mark.parametrize(
    "args,match",
    [
        (["missing.onnx", "--data", "d.npz"], "missing.onnx not found"),
        (["corrupt.onnx", "--data", "d.npz"], "corrupt.onnx is not a readable ONNX"),
        (["conv.onnx", "--data", "nothing.npz"], "nothing.npz not found"),
        (["conv.onnx", "--data", "wrongname.npz"], "has input 'z'"),
        (["conv.onnx", "--data", "empty.npz"], "no samples"),
        (["conv.onnx", "--data", "d.npz", "--method", "bogus"], "unknown method 'bogus'"),
        (["conv.onnx", "--data", "d.npz", "--method", "percentile:120"], "percentile must be in"),
        (["conv.onnx", "--histograms", "d.npz"], "not a calibkit histogram"),
    ],
)
def test_bad_input_is_one_clear_line(cli, tmp_path, args, match):
    models.conv_net(tmp_path / "conv.onnx")
    (tmp_path / "corrupt.onnx").write_bytes(b"\x08\x07garbage")
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 3, 8, 8), np.float32))
    np.savez(tmp_path / "wrongname.npz", z=np.zeros((2, 3, 8, 8), np.float32))
    np.savez(tmp_path / "empty.npz", x=np.zeros((0, 3, 8, 8), np.float32))
    r = cli("calibrate", *args, "-o", "out", expect=1)
    assert match in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_output_path_that_is_a_file(cli, conv_model, conv_data, tmp_path):
    (tmp_path / "file").write_text("x")
    r = cli("calibrate", conv_model, "--data", conv_data, "-o", tmp_path / "file" / "sub", expect=1)
    assert "cannot create output directory" in r.stderr


def test_interrupted_write_keeps_previous_outputs(conv_model, conv_data, tmp_path, monkeypatch):
    from calibkit.calibration import calibrate
    from calibkit.outputs import atomic

    calibrate(conv_model, conv_data, output_dir=tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}

    real_replace = os.replace

    def boom(src, dst):
        if str(dst).endswith(".cache"):
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        calibrate(conv_model, conv_data, output_dir=tmp_path, method="minmax")
    assert (tmp_path / "conv.cache").read_bytes() == before["conv.cache"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_bad_usage_exits_2(cli):
    assert cli("calibrate", "--batch-size", "0", expect=2).returncode == 2
    assert cli("frobnicate", expect=2).returncode == 2


def test_bare_demo_and_inspect(cli, tmp_path):
    r = cli("calibrate")
    assert "shipped demo" in r.stderr
    out = tmp_path / "calibkit-demo"
    assert (out / "digits_cnn.cache").is_file() and (out / "histograms.npz").is_file()
    hs = store.load(out / "histograms.npz")
    assert hs.samples == 300 and len(hs.tensors) == 11  # 18 float tensors, 7 inside fused Conv layers
    for f in ("digits_cnn.cache", "scales.json", "histograms.npz"):
        assert cli("inspect", out / f).returncode == 0
    assert "EntropyCalibration2" in cli("inspect", out / "digits_cnn.cache").stdout


def test_every_command_has_help(cli):
    for cmd in ("calibrate", "inspect", "merge", "methods"):
        r = cli(cmd, "--help")
        assert "Usage:" in r.stdout and f"calibkit {cmd}" in r.stdout
    assert "--method" in cli("calibrate", "--help").stdout
    listed = cli("methods").stdout
    for name in ("entropy", "percentile", "minmax", "mse"):
        assert name in listed


def test_single_buffer_path_gives_the_same_cache(conv_model, conv_data, tmp_path, monkeypatch):
    from calibkit.calibration import calibrate
    from calibkit.collect import host as collect

    a = calibrate(conv_model, conv_data, output_dir=tmp_path / "a", batch_size=5).outputs["cache"].read_bytes()
    monkeypatch.setattr(collect, "OVERLAP_LIMIT", 0)  # every run too big to double-buffer
    b = calibrate(conv_model, conv_data, output_dir=tmp_path / "b", batch_size=5).outputs["cache"].read_bytes()
    c = calibrate(conv_model, conv_data, output_dir=tmp_path / "c").outputs["cache"].read_bytes()  # auto batch
    assert a == b == c
