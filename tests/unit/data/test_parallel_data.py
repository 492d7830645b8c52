"""Reading data in parallel (CPU): image workers, prefetching and shards never change results."""

from __future__ import annotations

import models
import numpy as np
import pytest
from PIL import Image

from calibkit.collect.sharded import parse_devices, shard, shard_ranges
from calibkit.data import Preprocess, open_source
from calibkit.data.prefetch import prefetch
from calibkit.errors import CalibkitError
from calibkit.graph.model import input_specs, load


def _images(root, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    root.mkdir()
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (20 + i % 3, 24, 3), dtype=np.uint8)).save(root / f"im{i:03d}.png")
    return root


def test_image_workers_give_the_same_cache(tmp_path, cli):
    model = models.conv_net(tmp_path / "m.onnx", hw=16)
    data = _images(tmp_path / "imgs", 23)
    cli("calibrate", model, "--data", data, "--device", "cpu", "-o", tmp_path / "a")
    cli("calibrate", model, "--data", data, "--device", "cpu", "--workers", "2", "-o", tmp_path / "b")
    assert (tmp_path / "a/m.cache").read_bytes() == (tmp_path / "b/m.cache").read_bytes()
    assert (tmp_path / "a/scales.json").read_text() == (tmp_path / "b/scales.json").read_text()


def test_prefetch_keeps_order_and_raises_where_it_failed():
    def gen():
        yield from range(10)
        raise CalibkitError("bad item 10")

    got = []
    with pytest.raises(CalibkitError, match="bad item 10"):
        for x in prefetch(gen(), depth=2):
            got.append(x)
    assert got == list(range(10))
    assert [s for _, s in prefetch(range(5), stage=lambda x: x * x)] == [0, 1, 4, 9, 16]


@pytest.mark.parametrize("total,batch,shards", [(100, 8, 2), (37, 8, 3), (5, 8, 4), (64, 32, 2), (1, 1, 1)])
def test_shard_ranges_cover_and_align(total, batch, shards):
    r = shard_ranges(total, batch, shards)
    assert r[0][0] == 0 and r[-1][1] == total and len(r) <= shards
    assert all(a % batch == 0 and a < b for a, b in r) and all(r[i][1] == r[i + 1][0] for i in range(len(r) - 1))


def test_shards_of_sources_are_the_slices(tmp_path):
    model = models.conv_net(tmp_path / "m.onnx", hw=16)
    specs = input_specs(load(model))
    x = np.random.default_rng(1).normal(0, 1, (50, 3, 16, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "x.npz", x=x)
    for path in ("x.npy", "x.npz"):
        src = open_source(str(tmp_path / path), specs, Preprocess())
        got = np.concatenate([f["x"] for f in shard(src, specs, 13, 41).batches()])
        assert got.tobytes() == x[13:41].tobytes()
    imgs = open_source(str(_images(tmp_path / "imgs", 9)), specs, Preprocess())
    assert [f["x"].tobytes() for f in shard(imgs, specs, 2, 5).batches()] == [
        f["x"].tobytes() for f in list(imgs.batches())[2:5]
    ]


def test_devices_option_checked(tmp_path, cli):
    assert parse_devices("0,1", 2) == [0, 1] and parse_devices("all", 3) == [0, 1, 2] and parse_devices(None, 0) is None
    for bad, visible in [("0,0", 2), ("2", 2), ("x", 2), ("all", 0)]:
        with pytest.raises(CalibkitError, match="--devices"):
            parse_devices(bad, visible)
    model = models.conv_net(tmp_path / "m.onnx", hw=16)
    np.save(tmp_path / "x.npy", np.zeros((4, 3, 16, 16), np.float32))
    proc = cli("calibrate", model, "--data", tmp_path / "x.npy", "--devices", "5", expect=None)
    assert proc.returncode != 0 and "--devices" in proc.stderr and "Traceback" not in proc.stderr


def test_devices_on_ray_without_gpus_is_a_clear_error(tmp_path, cli, monkeypatch):
    """--devices with --ray auto on a machine without (those) GPUs: one line naming both options,
    before a Ray cluster is started; --ray without --devices is refused too."""
    from calibkit.sessions import cuda_device_count

    if cuda_device_count() >= 2:
        pytest.skip("this machine has the GPUs: the device run covers --devices --ray")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    model = models.conv_net(tmp_path / "m.onnx", hw=16)
    np.save(tmp_path / "x.npy", np.zeros((16, 3, 16, 16), np.float32))
    proc = cli(
        "calibrate",
        model,
        "--data",
        tmp_path / "x.npy",
        "--devices",
        "0,1",
        "--ray",
        "auto",
        "--batch-size",
        "8",
        "-o",
        tmp_path / "o",
        expect=None,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "--devices 0,1 --ray auto" in proc.stderr and "CUDA device(s) visible" in proc.stderr, proc.stderr
    proc = cli("calibrate", model, "--data", tmp_path / "x.npy", "--ray", "auto", "-o", tmp_path / "p", expect=None)
    assert proc.returncode == 1 and "give --devices too" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_ray_executor_counts_cluster_gpus(monkeypatch):
    """On a running cluster without GPUs, GPU actors are refused with a one-line message."""
    ray = pytest.importorskip("ray")
    from calibkit import executor

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if ray.is_initialized():
        pytest.skip("a Ray cluster is already connected")
    with pytest.raises(CalibkitError, match=r"a local Ray cluster has 0 GPU\(s\); 1 worker\(s\) need 1 each"):
        with executor.make(workers=1, ray="auto", gpus=1, visible_gpus=""):
            pass
    assert not ray.is_initialized()
