"""Every threshold method against a slow, obviously-correct reference written here."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import entropy as scipy_kl

from calibkit import methods
from calibkit.methods import entropy, mse, percentile
from calibkit.numerics.histogram import NUM_BINS, TensorHistogram


def ref_entropy_bin(counts: np.ndarray, levels: int = 128, start: int = 128) -> int:
    bins = counts.astype(np.float64).copy()
    bins[0] = bins[1]
    best_i, best = None, None
    for i in range(start, NUM_BINS + 1):
        edges = np.linspace(0, i, num=levels + 1)
        group = np.digitize(np.arange(i), edges) - 1
        p = bins[:i].copy()
        p[-1] += bins[i:].sum()
        nonzero = bins[:i] > 0
        group_total = np.bincount(group[nonzero], weights=bins[:i][nonzero], minlength=levels)
        group_size = np.bincount(group[nonzero], minlength=levels)
        q = np.zeros(i)
        q[nonzero] = group_total[group[nonzero]] / group_size[group[nonzero]]
        if q.sum() == 0 or np.any((q == 0) & (p > 0)):
            kl = np.inf
        else:
            kl = scipy_kl(p, q)
        if best is None or kl <= best:  # ties: the larger i
            best_i, best = i, kl
    return best_i


def ref_percentile_bin(counts: np.ndarray, p: float) -> int:
    total = counts.sum()
    running = 0
    for k, c in enumerate(counts):
        running += c
        if running >= p / 100.0 * total:
            return k + 1
    return NUM_BINS


def ref_mse_bin(h: TensorHistogram, start: int = 128) -> int:
    centers = (np.arange(NUM_BINS) + 0.5) * h.bin_width
    counts = h.counts.astype(np.float64)
    best_i, best = None, None
    for i in range(start, NUM_BINS):
        step = centers[i] / 127.0
        fq = np.clip(np.rint(centers / step), -127, 127) * step
        err = ((fq - centers) ** 2 * counts).sum()
        if best is None or err < best:  # ties: the smaller amax
            best_i, best = i, err
    return best_i


def random_histograms(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    makers = [
        lambda k: rng.standard_normal(k) * rng.uniform(0.01, 50),
        lambda k: rng.standard_cauchy(k),
        lambda k: np.maximum(rng.laplace(size=k), 0),
        lambda k: rng.exponential(size=k) ** 3,
        lambda k: np.concatenate([rng.uniform(-1, 1, k), rng.normal(0, 30, max(1, k // 500))]),
        lambda k: rng.integers(-3, 4, k).astype(float),  # sparse: few non-zero bins
    ]
    for t in range(n):
        h = TensorHistogram()
        h.update(makers[t % len(makers)](int(rng.integers(5, 60000))).astype(np.float32))
        yield h


def demo_histograms():
    from calibkit import demo
    from calibkit.collect.host import collect
    from calibkit.data import Preprocess, open_source
    from calibkit.graph.model import input_specs, load

    model = load(demo.MODEL)
    src = open_source(demo.CALIB, input_specs(model), Preprocess.from_file(demo.PREPROCESS))
    return list(collect(model, src).tensors.values())


@pytest.fixture(scope="module")
def real():
    return demo_histograms()


def test_entropy_matches_reference_random():
    for h in random_histograms(24):
        assert entropy.select_bin(h, entropy.EntropyConfig()) == ref_entropy_bin(h.counts)


def test_entropy_matches_reference_real(real):
    for h in real:
        assert entropy.select_bin(h, entropy.EntropyConfig()) == ref_entropy_bin(h.counts)


def test_entropy_other_levels():
    for h in random_histograms(4, seed=3):
        cfg = entropy.EntropyConfig(levels=64, start_bin=200)
        assert entropy.select_bin(h, cfg) == ref_entropy_bin(h.counts, 64, 200)


@pytest.mark.parametrize("p", [50.0, 99.0, 99.9, 99.99, 99.999, 100.0])
def test_percentile_matches_reference(p, real):
    for h in list(random_histograms(30, seed=1)) + real:
        assert percentile.select_bin(h, percentile.PercentileConfig(p)) == ref_percentile_bin(h.counts, p)


def test_mse_matches_reference(real):
    for h in list(random_histograms(12, seed=2)) + real[:6]:
        assert mse.select_bin(h, mse.MSEConfig()) == ref_mse_bin(h)


def test_minmax_is_exact_absmax(real):
    for h in real:
        assert methods.get("minmax").amax(h, methods.make_config("minmax")) == max(-h.min, h.max)


def test_amax_never_exceeds_absmax_and_is_positive(real):
    for name in methods.names():
        m = methods.get(name)
        for h in real:
            a = m.amax(h, m.config_cls())
            assert 0 < a <= h.amax


def test_methods_disagree_on_outliers():
    h = TensorHistogram()
    rng = np.random.default_rng(0)
    h.update(np.concatenate([rng.standard_normal(200000), rng.laplace(0, 3, 2000), [80.0]]).astype(np.float32))
    got = {n: methods.get(n).amax(h, methods.get(n).config_cls()) for n in methods.names()}
    assert got["minmax"] == np.float32(80.0)
    assert got["entropy"] < 20 and got["percentile"] < 20 and got["mse"] < 50
    assert len(set(got.values())) == 4


def test_entropy_single_sparse_outlier_keeps_it():
    # EntropyCalibration2's non-zero spreading makes KL infinite wherever the last kept bin
    # is empty but the clipped tail is not, so a lone outlier past empty bins is kept.
    h = TensorHistogram()
    h.update(np.concatenate([np.random.default_rng(0).standard_normal(100000), [80.0]]).astype(np.float32))
    assert methods.get("entropy").amax(h, methods.make_config("entropy")) == np.float32(80.0)


def test_spec_parsing_and_validation():
    name, cfg = methods.parse_spec("percentile:99.9")
    assert name == "percentile" and cfg.percentile == 99.9
    name, cfg = methods.parse_spec("entropy:levels=64,start_bin=256")
    assert (cfg.levels, cfg.start_bin) == (64, 256)
    from calibkit.errors import CalibkitError

    for bad in ["nope", "percentile:101", "percentile:abc", "minmax:3", "entropy:levels=4000"]:
        with pytest.raises(CalibkitError):
            methods.parse_spec(bad)
