"""The compiled reducer (numba) against the NumPy reference: the same histograms bit for bit."""

from __future__ import annotations

import importlib.util
import math

import models
import numpy as np
import pytest

from calibkit.numerics import kernel as hist_kernel
from calibkit.numerics.histogram import NUM_BINS, TensorHistogram

numba_missing = pytest.mark.skipif(
    importlib.util.find_spec("numba") is None, reason="numba not installed (calibkit[fast])"
)


def build(chunks, mode: str, monkeypatch, weight: int = 1) -> TensorHistogram:
    monkeypatch.setenv("CALIBKIT_KERNEL", mode)
    if mode == "numba":
        assert hist_kernel.kernel() is not None, "the compiled kernel did not load"
    h = TensorHistogram()
    for c in chunks:
        h.update(c, weight=weight)
    return h


def identical(a: TensorHistogram, b: TensorHistogram) -> None:
    assert a.exp == b.exp
    np.testing.assert_array_equal(a.counts, b.counts)
    assert a.counts.dtype == b.counts.dtype
    assert (a.count, a.nan, a.inf) == (b.count, b.nan, b.inf)
    for x, y in ((a.min, b.min), (a.max, b.max)):  # same value and same sign of zero
        assert math.copysign(1.0, x) == math.copysign(1.0, y) and (x == y or (math.isnan(x) and math.isnan(y)))


def hostile(rng: np.random.Generator, dtype=np.float32) -> list[np.ndarray]:
    info = np.finfo(dtype)
    tiny = info.smallest_subnormal
    special = np.array(
        [np.nan, np.inf, -np.inf, 0.0, -0.0, tiny, -tiny, info.tiny, info.max, -info.max, 1.0, 2.0, 0.5], dtype
    )
    relu = np.maximum(rng.standard_normal(20011), 0).astype(dtype)
    relu[rng.integers(0, relu.size, 50)] = -0.0
    mixed = rng.standard_normal(9000).astype(dtype) * dtype(1e3)
    mixed[::97] = np.nan
    mixed[5::131] = -np.inf
    denormal = (rng.random(8193) * 100).astype(dtype) * tiny
    return [
        rng.standard_normal(8191).astype(dtype),  # block and unroll edges
        rng.standard_normal(8192).astype(dtype) * dtype(0.001),
        relu,
        special,
        denormal,  # the range exponent stays at E_MIN: every value in bin 0
        np.zeros(8, dtype),
        -np.zeros(5, dtype),
        np.full(7, np.nan, dtype),  # nothing finite
        mixed,
        rng.standard_normal((4, 3, 17, 9)).astype(dtype)[:, 1, ::2, ::3],  # a strided view
        np.array([info.max, -info.max, 3.0], dtype),  # range grows to the top exponent
        (rng.standard_normal(3) * 1e-30).astype(dtype),
        np.array([], dtype),
    ]


@numba_missing
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kernel_equals_numpy_on_hostile_data(monkeypatch, dtype, seed):
    chunks = hostile(np.random.default_rng(seed), dtype)
    for order in (chunks, chunks[::-1]):  # range growth between batches, both ways
        ref = build(order, "numpy", monkeypatch)
        fast = build(order, "numba", monkeypatch)
        identical(fast, ref)
        assert ref.nan > 0 and ref.inf > 0 and ref.counts.sum() == ref.count
    for c in chunks:  # each batch alone, weighted as a tensor without a batch axis
        identical(build([c], "numba", monkeypatch, weight=3), build([c], "numpy", monkeypatch, weight=3))


@numba_missing
def test_kernel_equals_numpy_on_float16_and_scales(monkeypatch):
    rng = np.random.default_rng(5)
    for scale in (1e-7, 1.0, 300.0, 6e4):
        x = (rng.standard_normal(5003) * scale).astype(np.float16)
        x[::50] = np.float16(np.inf)
        x[3] = np.float16(np.nan)
        identical(
            build([x, x[:1000] * np.float16(2)], "numba", monkeypatch),
            build([x, x[:1000] * np.float16(2)], "numpy", monkeypatch),
        )
    big = rng.standard_normal(1 << 20).astype(np.float32)
    identical(build([big], "numba", monkeypatch), build([big], "numpy", monkeypatch))


@numba_missing
def test_kernel_bins_are_direct_floors(monkeypatch):
    """Not only equal to NumPy: equal to floor(|x| * 2048 / 2**exp) computed in float64."""
    x = np.array([0.0, -0.0, 0.49, 0.5, 1.0, 1.999, -1.999, -0.25, np.nan, np.inf], dtype=np.float32)
    h = build([x], "numba", monkeypatch)
    finite = x[np.isfinite(x)].astype(np.float64)
    expected = np.bincount(np.floor(np.abs(finite) * NUM_BINS / 2.0).astype(int), minlength=NUM_BINS)
    assert h.exp == 1 and h.nan == 1 and h.inf == 1
    np.testing.assert_array_equal(h.counts, expected)


def test_numpy_fallback_when_numba_is_missing(monkeypatch):
    monkeypatch.delenv("CALIBKIT_KERNEL", raising=False)
    monkeypatch.setattr(hist_kernel, "_state", {})

    def no_numba():
        raise ImportError("No module named 'numba'")

    monkeypatch.setattr(hist_kernel, "_build", no_numba)
    assert hist_kernel.kernel() is None
    assert hist_kernel.warm() is None  # already known missing: no loader thread
    x = np.array([0.5, -3.0, np.nan, 0.0], np.float32)
    h = TensorHistogram()
    h.update(x)
    assert (h.exp, h.count, h.nan, int(h.counts[256]), int(h.counts[1536]), int(h.counts[0])) == (2, 3, 1, 1, 1, 1)


def test_numpy_mode_never_loads_numba(monkeypatch):
    monkeypatch.setenv("CALIBKIT_KERNEL", "numpy")
    monkeypatch.setattr(hist_kernel, "_state", {})
    monkeypatch.setattr(hist_kernel, "_build", lambda: pytest.fail("numba loaded in numpy mode"))
    assert hist_kernel.warm() is None and hist_kernel.kernel() is None
    h = TensorHistogram()
    h.update(np.arange(10, dtype=np.float32))
    assert h.count == 10 and h.exp == 4


@numba_missing
def test_collect_uses_the_kernel_and_caches_equal_numpy(cli, monkeypatch, tmp_path):
    """Through the real CLI: numpy and numba reducers, several run batches -> identical bytes."""
    model = models.conv_net(tmp_path / "conv.onnx")
    rng = np.random.default_rng(3)
    x = rng.normal(0, 1, (23, 3, 8, 8)).astype(np.float32)
    x[2, 1, 3, 3] = 1e30
    x[4] = -0.0
    np.savez(tmp_path / "calib.npz", x=x)
    outs = set()
    for mode in ("numpy", "numba"):
        for bs in (1, 5, 23):
            monkeypatch.setenv("CALIBKIT_KERNEL", mode)
            d = tmp_path / f"{mode}{bs}"
            cli(
                "calibrate", model, "--data", tmp_path / "calib.npz", "--method", "entropy", "--batch-size", bs, "-o", d
            )
            outs.add(((d / "conv.cache").read_bytes(), (d / "histograms.npz").read_bytes()))
    assert len(outs) == 1


@numba_missing
def test_pipeline_reduces_with_the_kernel(monkeypatch, tmp_path):
    from calibkit.calibration import calibrate

    model = models.conv_net(tmp_path / "conv.onnx")
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).normal(0, 1, (9, 3, 8, 8)).astype(np.float32))
    calls = []
    real = hist_kernel.bin_counts
    monkeypatch.setattr(
        hist_kernel, "bin_counts", lambda fn, flat, scale: calls.append(flat.size) or real(fn, flat, scale)
    )
    monkeypatch.setenv("CALIBKIT_KERNEL", "numba")
    calibrate(model, data=str(tmp_path / "calib.npz"), output_dir=tmp_path / "o", device="cpu", batch_size=4)
    assert len(calls) >= 3 * 9  # every tensor of every run
