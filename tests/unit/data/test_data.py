"""Data sources: images, npz/npy (streamed), loader scripts, iterables; validation errors."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from PIL import Image

from calibkit.data import FeedStats, Preprocess, open_source, run_batches
from calibkit.errors import CalibkitError
from calibkit.graph.model import InputSpec

SPEC = [InputSpec("x", np.dtype(np.float32), ("N", 3, 4, 4))]


def feeds(source, specs=SPEC, run_batch=4):
    stats = FeedStats()
    return list(run_batches(source, specs, run_batch, stats)), stats


def test_image_preprocessing_values(tmp_path):
    img = np.zeros((6, 8, 3), np.uint8)
    img[..., 0] = 255  # pure red
    img[:, 4:, 2] = 100
    Image.fromarray(img).save(tmp_path / "a.png")
    pre = Preprocess(size=(4, 4), resize=4, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), channels="BGR", layout="NCHW")
    (out,), stats = feeds(open_source(tmp_path, SPEC, pre))
    x = out["x"]
    assert x.shape == (1, 3, 4, 4) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, 2], 1.0)  # red is the last channel in BGR: (1 - .5) / .5
    np.testing.assert_allclose(x[0, 1], -1.0)  # no green
    assert stats.samples == 1
    nhwc = Preprocess(size=(4, 4), layout="NHWC")
    src = open_source(tmp_path, [InputSpec("x", np.dtype(np.float32), ("N", 4, 4, 3))], nhwc)
    assert next(src.batches())["x"].shape == (1, 4, 4, 3)


def test_image_size_defaults_to_model(tmp_path):
    Image.fromarray(np.full((10, 10, 3), 128, np.uint8)).save(tmp_path / "a.jpg")
    src = open_source(tmp_path, SPEC, Preprocess())
    assert next(src.batches())["x"].shape == (1, 3, 4, 4)


def test_preprocess_file_errors(tmp_path):
    p = tmp_path / "pre.json"
    p.write_text('{"sizes": [1, 2]}')
    with pytest.raises(CalibkitError, match="unknown key 'sizes'"):
        Preprocess.from_file(p)
    p.write_text("{nope")
    with pytest.raises(CalibkitError, match="line 1"):
        Preprocess.from_file(p)
    with pytest.raises(CalibkitError, match="layout"):
        Preprocess(layout="CHWN")


def test_npz_streams_and_rebatches(tmp_path):
    x = np.arange(10 * 48, dtype=np.float32).reshape(10, 3, 4, 4)
    np.savez_compressed(tmp_path / "d.npz", x=x)
    src = open_source(tmp_path / "d.npz", SPEC)
    src.chunk = 3
    out, stats = feeds(src, run_batch=4)
    assert [len(o["x"]) for o in out] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([o["x"] for o in out]), x)
    assert stats.samples == 10


def test_fingerprint_independent_of_batching(tmp_path):
    x = np.random.default_rng(0).normal(size=(9, 3, 4, 4)).astype(np.float32)
    digests = set()
    for chunk in (1, 2, 9):
        src = open_source([{"x": c} for c in np.split(x, range(chunk, 9, chunk))], SPEC)
        _, stats = feeds(src, run_batch=5)
        digests.add(stats.streamed_fingerprint())
    assert len(digests) == 1


def test_npz_memory_does_not_grow_with_size(tmp_path):
    big = np.zeros((4000, 3, 4, 4), np.float32)
    np.savez(tmp_path / "big.npz", x=big)
    tracemalloc.start()
    for _ in run_batches(open_source(tmp_path / "big.npz", SPEC), SPEC, 16, FeedStats()):
        pass
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < big.nbytes / 10


def test_multi_input_npz_and_int_casts(tmp_path):
    specs = [InputSpec("a", np.dtype(np.float32), ("N", 2)), InputSpec("ids", np.dtype(np.int64), ("N", 1))]
    np.savez(tmp_path / "m.npz", a=np.ones((5, 2), np.float64), ids=np.ones((5, 1), np.int32))
    out, _ = feeds(open_source(tmp_path / "m.npz", specs), specs)
    assert out[0]["a"].dtype == np.float32 and out[0]["ids"].dtype == np.int64


def test_loader_script(tmp_path):
    script = tmp_path / "loader.py"
    script.write_text(
        "import numpy as np\ndef load_data():\n    for i in range(3):\n        yield {'x': np.full((2, 3, 4, 4), i, np.float32)}\n"
    )
    out, stats = feeds(open_source(f"{script}:load_data", SPEC))
    assert stats.samples == 6 and [len(o["x"]) for o in out] == [4, 2]
    (tmp_path / "bad.py").write_text("def load_data():\n    raise RuntimeError('disk gone')\n    yield\n")
    with pytest.raises(CalibkitError, match="disk gone"):
        feeds(open_source(f"{tmp_path / 'bad.py'}:load_data", SPEC))
    with pytest.raises(CalibkitError, match="no function 'other'"):
        open_source(f"{script}:other", SPEC)


def test_dynamic_shapes_start_new_batches():
    specs = [InputSpec("x", np.dtype(np.float32), ("N", "L"))]
    data = [
        {"x": np.zeros((3, 5), np.float32)},
        {"x": np.zeros((2, 7), np.float32)},
        {"x": np.zeros((2, 7), np.float32)},
    ]
    out, _ = feeds(open_source(data, specs), specs, run_batch=8)
    assert [o["x"].shape for o in out] == [(3, 5), (4, 7)]


def test_fixed_batch_dim_rules():
    specs = [InputSpec("x", np.dtype(np.float32), (4, 2))]
    out, stats = feeds(open_source([{"x": np.zeros((10, 2), np.float32)}], specs), specs, run_batch=3)
    assert [len(o["x"]) for o in out] == [4, 4] and stats.dropped == 2


@pytest.mark.parametrize(
    "feed,match",
    [
        ({"y": np.zeros((1, 3, 4, 4), np.float32)}, "has input 'y'"),
        ({}, "lacks model input 'x'"),
        ({"x": np.zeros((3, 4, 4), np.float32)}, "rank"),
        ({"x": np.zeros((1, 3, 5, 4), np.float32)}, "axis 2"),
        ({"x": np.zeros((1, 3, 4, 4), np.int32)}, "int32"),
    ],
)
def test_bad_feeds(feed, match):
    with pytest.raises(CalibkitError, match=match):
        feeds(open_source([feed], SPEC))


def test_empty_and_missing_sources(tmp_path):
    with pytest.raises(CalibkitError, match="no samples"):
        feeds(open_source([], SPEC))
    with pytest.raises(CalibkitError, match="not found"):
        open_source(tmp_path / "nope", SPEC)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CalibkitError, match="no images"):
        open_source(tmp_path / "empty", SPEC)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(CalibkitError, match="bad.npz"):
        open_source(tmp_path / "bad.npz", SPEC)
