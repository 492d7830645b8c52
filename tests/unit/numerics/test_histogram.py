"""Histogram engine: exact merging whatever the batching, order or sharding."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from calibkit.numerics.histogram import E_MIN, NUM_BINS, TensorHistogram, fold, range_exponent


def build(chunks) -> TensorHistogram:
    h = TensorHistogram()
    for c in chunks:
        h.update(c)
    return h


def same(a: TensorHistogram, b: TensorHistogram) -> None:
    assert a.exp == b.exp
    np.testing.assert_array_equal(a.counts, b.counts)
    assert (a.min, a.max, a.count, a.nan, a.inf) == (b.min, b.max, b.count, b.nan, b.inf)


def test_range_exponent_is_strictly_above_max():
    for v in [1e-30, 0.3, 0.5, 1.0, 1.5, 2.0, 1023.9, 1024.0, 3e38]:
        e = range_exponent(v)
        assert v < 2.0**e and (e == E_MIN or v >= 2.0 ** (e - 1))
    assert range_exponent(0.0) == E_MIN


def test_bins_match_direct_floor():
    x = np.array([0.0, 0.49, 0.5, 1.0, 1.999, -1.999, -0.25], dtype=np.float32)
    h = build([x])
    assert h.exp == 1  # max |x| 1.999 < 2
    expected = np.bincount(np.floor(np.abs(x.astype(np.float64)) * NUM_BINS / 2.0).astype(int), minlength=NUM_BINS)
    np.testing.assert_array_equal(h.counts, expected)
    assert h.min == np.float32(-1.999) and h.max == np.float32(1.999) and h.count == 7


def test_fold_is_exact():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(10000) * 0.7).astype(np.float32)
    h = build([x])
    for k in range(1, 14):
        wider = build([x, np.array([2.0 ** (h.exp + k - 1)], np.float32)])  # forces range 2**(exp+k)
        folded = fold(h.counts, k)
        folded[min(NUM_BINS - 1, NUM_BINS >> 1)] += 1  # the extra value lands at half range
        assert wider.exp == h.exp + k
        np.testing.assert_array_equal(wider.counts, folded)


arrays = st.lists(
    st.tuples(st.integers(1, 300), st.floats(1e-6, 1e4), st.integers(0, 2**31 - 1)),
    min_size=1,
    max_size=8,
)


@settings(max_examples=60, deadline=None)
@given(arrays, st.randoms(use_true_random=False))
def test_merge_exact_for_any_batching_order_and_sharding(spec, rnd):
    data = np.concatenate(
        [np.random.default_rng(s).standard_cauchy(n).astype(np.float32) * np.float32(sc) for n, sc, s in spec]
    )
    whole = build([data])
    # re-batched in random sizes and random order
    cuts = sorted(rnd.sample(range(1, len(data)), min(len(data) - 1, rnd.randint(0, 6)))) if len(data) > 1 else []
    chunks = np.split(data, cuts)
    rnd.shuffle(chunks)
    same(build(chunks), whole)
    # split into shards, each built separately, merged in either order
    half = len(chunks) // 2
    a, b = build(chunks[:half]), build(chunks[half:])
    same(a.copy().merge(b), whole)
    same(b.copy().merge(a), whole)


def test_nan_inf_counted_and_excluded():
    x = np.array([1.0, np.nan, np.inf, -np.inf, -2.0, np.nan], np.float32)
    h = build([x])
    assert (h.nan, h.inf, h.count) == (2, 2, 2)
    assert h.amax == 2.0 and h.counts.sum() == 2
    assert math.isfinite(h.min) and math.isfinite(h.max)


def test_all_nan_batch_leaves_range_untouched():
    h = build([np.full(5, np.nan, np.float32)])
    assert h.count == 0 and h.nan == 5 and h.exp == E_MIN and h.amax == 0.0


def test_clipped_fraction():
    h = build([np.arange(100, dtype=np.float32)])  # 0..99, range 128
    assert h.clipped_fraction(h.amax) == 0.0
    assert abs(h.clipped_fraction(50.0) - 0.5) < 1e-12


def test_threshold_plot_with_data_in_the_last_bins():
    """Sigmoid-like tensors fill the histogram's last bin (max just under the range): the report's
    threshold figure must still draw (it once built 2050 edges for 2048 counts)."""
    from calibkit.report import figures

    for top in (1.0 - 1e-6, 0.9995, 0.51):
        h = TensorHistogram()
        h.update(np.array([0.0, 0.25, top], np.float32))
        assert (h.counts[-1] > 0) == (top > 2047 / 2048)
        uri = figures.threshold_plot("sigmoid_out", h, {"entropy": 0.5}, {"entropy": "#d62728"})
        assert uri.startswith("data:image/png;base64,") and len(uri) > 1000
