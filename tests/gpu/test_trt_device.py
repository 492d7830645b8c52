"""Device memory and calibrator batch staging on a real NVIDIA GPU (skips without one).

Nothing here needs TensorRT: it checks what calibkit hands TensorRT (device pointers holding
the exact bytes of each batch) and that every byte it allocates is freed.
"""

from __future__ import annotations

import models
import numpy as np
import pytest

from calibkit.graph.model import input_specs, load
from calibkit.sessions import cuda_device_count
from calibkit.trt import device as D
from calibkit.trt.feed import CalibrationFeed
from calibkit.trt.staging import SUPPORTED, Stager

if not D.available():
    pytest.skip("neither cuda-python nor pycuda is installed", allow_module_level=True)
if cuda_device_count() == 0:
    pytest.skip("no NVIDIA GPU visible", allow_module_level=True)

BACKENDS = D.available()
SLACK = 4 << 20  # cudaMemGetInfo granularity: a leak of >= 4 MiB over 1,000 batches fails


@pytest.fixture(params=BACKENDS, scope="module")
def dev(request):
    d = D.open_device(request.param)
    yield d
    d.close()


def _random(dtype, shape, rng):
    dt = np.dtype(dtype)
    if dt == np.bool_:
        return rng.integers(0, 2, shape).astype(bool)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return rng.integers(info.min, info.max, shape, dtype=dt, endpoint=True)
    return rng.normal(0, 100, shape).astype(dt)


@pytest.mark.parametrize("dtype", SUPPORTED, ids=lambda t: np.dtype(t).name)
def test_stage_every_dtype_roundtrip(dev, dtype):
    rng = np.random.default_rng(0)
    with Stager(dev) as st:
        for shape in [(1,), (4, 3, 8, 8), (2, 5, 7), (33, 17)]:
            a = _random(dtype, shape, rng)
            (ptr,) = st.stage({"x": a}, ["x"])
            assert isinstance(ptr, int) and ptr != 0
            back = st.read("x", a.shape, a.dtype)
            assert back.tobytes() == a.tobytes()
            raw = np.empty(a.nbytes, np.uint8)  # the pointer itself holds the bytes
            dev.copy_out(raw, ptr)
            dev.synchronize()
            assert raw.tobytes() == a.tobytes()


def test_pointers_follow_names_order(dev):
    rng = np.random.default_rng(1)
    feed = {
        "a": _random(np.float32, (4, 4), rng),
        "b": _random(np.int64, (4, 1), rng),
        "c": _random(np.float16, (4, 2), rng),
    }
    with Stager(dev) as st:
        names = ["c", "a", "b"]
        for name, ptr in zip(names, st.stage(feed, names)):
            out = np.empty_like(feed[name])
            dev.copy_out(out, ptr)
            dev.synchronize()
            assert out.tobytes() == feed[name].tobytes()


def test_no_leak_over_1000_batches(dev):
    rng = np.random.default_rng(2)
    dev.synchronize()
    free_before, total = dev.mem_info()
    st = Stager(dev)
    for i in range(1000):
        n = 1 + (i * 7) % 32  # sizes go up and down: buffers are regrown and reused
        feed = {"x": _random(np.float32, (n, 3, 32, 32), rng), "m": _random(np.uint8, (n, 64), rng)}
        ptrs = st.stage(feed, ["x", "m"])
        if i % 97 == 0:
            assert st.read("x", feed["x"].shape, np.float32).tobytes() == feed["x"].tobytes()
        assert len(ptrs) == 2
    peak = st.allocated
    st.close()
    assert st.allocated == 0
    dev.synchronize()
    free_after, _ = dev.mem_info()
    print(
        f"{dev.name}: free before {free_before} after {free_after} of {total} bytes; peak staged {peak} bytes; 1000 batches"
    )
    assert free_after >= free_before - SLACK


def test_calibration_feed_stages_rebatched_data(dev, tmp_path):
    model = models.conv_net(tmp_path / "m.onnx")
    rng = np.random.default_rng(3)
    x = rng.normal(0, 1, (37, 3, 8, 8)).astype(np.float32)
    chunks = [x[:5], x[5:20], x[20:]]  # a source whose chunking differs from the batch
    feed = CalibrationFeed(
        input_specs(load(model)),
        "EntropyCalibration2",
        batch_size=4,
        data=lambda: ({"x": c} for c in chunks),
        device=dev,
    )
    free_before, _ = dev.mem_info()
    got = []
    while (ptrs := feed.next_pointers(["x"])) is not None:
        out = np.empty((4, 3, 8, 8), np.float32)
        dev.copy_out(out, ptrs[0])
        dev.synchronize()
        got.append(out)
    feed.close()
    assert feed.batches_served == 9 and feed.skipped == 1  # 37 = 9 * 4 + 1 (calibration runs at one shape)
    assert np.concatenate(got).tobytes() == x[:36].tobytes()
    dev.synchronize()
    assert dev.mem_info()[0] >= free_before - SLACK
