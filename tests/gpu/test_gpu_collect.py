"""The GPU reducer and GPU thresholds against the host's, on a real NVIDIA GPU (skips without one).

Histograms must be bit-identical to the host reducer's on the same values; every tensor's
threshold must equal the host method's.
"""

from __future__ import annotations

import os
from pathlib import Path

import models
import numpy as np
import pytest

from calibkit.sessions import cuda_device_count

cp = pytest.importorskip("cupy")
if cuda_device_count() == 0:
    pytest.skip("no NVIDIA GPU visible", allow_module_level=True)

from calibkit import methods  # noqa: E402
from calibkit.artifacts import histograms as store  # noqa: E402
from calibkit.artifacts.scales import compute  # noqa: E402
from calibkit.collect.cuda.fused import VARIANTS, FusedHistograms  # noqa: E402
from calibkit.methods import cuda as gpu_methods  # noqa: E402
from calibkit.numerics.histogram import NUM_BINS, TensorHistogram  # noqa: E402


def same(a: TensorHistogram, b: TensorHistogram) -> bool:
    return (a.exp, a.count, a.nan, a.inf, a.min, a.max) == (
        b.exp,
        b.count,
        b.nan,
        b.inf,
        b.min,
        b.max,
    ) and np.array_equal(a.counts, b.counts)


def _runs(rng):
    """Per-run arrays of awkward tensors: growing ranges (folds, one by >= 11 octaves), NaN/Inf,
    all-NaN, zeros, one sign, subnormal-range values, float16/64, sizes off the chunk size."""
    runs = []
    for r in range(4):
        grow = 10.0**r
        f32 = rng.normal(0, grow, 300_001).astype(np.float32)
        f32[::997] = 0.0
        relu = np.maximum(rng.normal(0, 1, (7, 33, 65)), 0).astype(np.float32)
        nan = rng.normal(0, 1, 5000).astype(np.float32)
        nan[rng.integers(0, 5000, 40)] = np.nan
        nan[rng.integers(0, 5000, 7)] = np.inf
        nan[3] = -np.inf
        jump = (rng.normal(0, 1, 4096) * (1e-3 if r < 2 else 1e4)).astype(np.float32)
        runs.append(
            {
                "f32": f32,
                "relu": relu,
                "nan": nan,
                "jump": jump,
                "allnan": np.full(17, np.nan, np.float32),
                "zeros": np.zeros(1000, np.float32) if r != 3 else np.full(1000, -0.0, np.float32),
                "neg": -np.abs(rng.normal(0, 1, 777)).astype(np.float32),
                "tiny": (rng.normal(0, 1, 999) * 1e-20).astype(np.float32),
                "f16": rng.normal(0, 3 * grow, (3, 1001)).astype(np.float16),
                "f64": rng.normal(0, 1e6 * grow, 65537),
                "one": np.array([r - 1.5], np.float32),
            }
        )
    return runs


@pytest.mark.parametrize("variant", VARIANTS)
def test_fused_reducer_bit_identical_to_host(variant):
    runs = _runs(np.random.default_rng(0))
    fh = FusedHistograms(list(runs[0]), variant)
    host: dict[str, TensorHistogram] = {}
    for run in runs:
        fh.update({k: cp.asarray(v) for k, v in run.items()})
        for k, v in run.items():
            host.setdefault(k, TensorHistogram()).update(v)
    dev = fh.to_host()
    bad = [k for k in host if not same(dev[k], host[k])]
    assert not bad, {k: (dev[k].exp, host[k].exp, dev[k].count, host[k].count) for k in bad}
    assert dev["jump"].exp >= 14 and dev["allnan"].nan == 4 * 17 and dev["allnan"].count == 0 and dev["nan"].inf >= 4


def test_fixed_table_reused_over_refilled_buffers():
    """The collector's path: one table over bound buffers, refilled every run."""
    rng = np.random.default_rng(1)
    bufs = {"a": cp.empty((4, 3, 50, 50), cp.float32), "b": cp.empty(70_000, cp.float16)}
    fh = FusedHistograms(list(bufs))
    tab = fh.table(bufs)
    host = {}
    for r in range(5):
        vals = {
            "a": rng.normal(0, 2.0**r, (4, 3, 50, 50)).astype(np.float32),
            "b": rng.normal(0, 1, 70_000).astype(np.float16),
        }
        for k, v in vals.items():
            bufs[k].set(v)
            host.setdefault(k, TensorHistogram()).update(v)
        fh.reduce(tab)
        cp.cuda.Device().synchronize()
    dev = fh.to_host()
    assert all(same(dev[k], host[k]) for k in bufs)


def _collect(tmp_path, reducer: str, samples: int, batch: int, monkeypatch):
    from calibkit.collect.cuda import driver as gpu_driver
    from calibkit.collect.host import collect
    from calibkit.data import Preprocess, open_source
    from calibkit.graph.model import input_specs, load

    if reducer == "host":
        monkeypatch.setattr(gpu_driver, "available", lambda: False)
    model = models.conv_net(tmp_path / "conv.onnx", channels=3, hw=32)
    rng = np.random.default_rng(5)
    np.save(tmp_path / "x.npy", rng.normal(0, 1, (samples, 3, 32, 32)).astype(np.float32))
    proto = load(model)
    specs = input_specs(proto)
    col = collect(
        proto, open_source(str(tmp_path / "x.npy"), specs, Preprocess()), run_batch=batch, device="cuda", specs=specs
    )
    monkeypatch.undo()
    return col


@pytest.mark.parametrize("samples", [64, 37])  # 37: the last run is padded
def test_collect_on_gpu_equals_host_reducer(tmp_path, monkeypatch, samples):
    dev = _collect(tmp_path, "device", samples, 8, monkeypatch)
    host = _collect(tmp_path, "host", samples, 8, monkeypatch)
    assert "CUDAExecutionProvider" in dev.providers and dev.padded  # CUDA runs are padded to the run batch
    assert list(dev.tensors) == list(host.tensors)
    bad = [k for k in host.tensors if not same(dev.tensors[k], host.tensors[k])]
    assert not bad
    assert dev.tensors["x"].count == samples * 3 * 32 * 32


def _synthetic() -> dict[str, TensorHistogram]:
    rng = np.random.default_rng(7)
    out = {}
    for i in range(40):
        h = TensorHistogram()
        h.update(rng.standard_t(2 + i % 5, 20_000 + 1000 * i).astype(np.float32) * (1 + i))
        out[f"t{i}"] = h
    spike = TensorHistogram()
    spike.update(np.repeat(np.float32([0, 1, 2, 3]), 1000))  # few distinct values: near-ties
    out["spike"] = spike
    out["empty"] = TensorHistogram()
    zeros = TensorHistogram()
    zeros.update(np.zeros(100, np.float32))
    out["zeros"] = zeros
    top = TensorHistogram()
    top.update(np.float32([1e-30, 0.999, -0.75]))
    out["top"] = top
    return out


def _corpus_sets() -> list[dict[str, TensorHistogram]]:
    root = os.environ.get("CALIBKIT_CORPUS_HISTS")
    if not root:
        return []
    return [store.load(p).tensors for p in sorted(Path(root).rglob("histograms.npz"))]


@pytest.mark.parametrize(
    "spec", ["entropy", "entropy:levels=64,start_bin=64", "percentile", "percentile:99.9", "mse", "minmax", "auto"]
)
def test_gpu_thresholds_equal_host(spec):
    name, cfg = methods.parse_spec(spec)
    sets = [_synthetic(), *_corpus_sets()]
    total = 0
    detail = methods.get(name).detail
    for hists in sets:
        dev = gpu_methods.amaxes(hists, name, cfg)
        if detail:  # auto: the amax and the record of the choice (every candidate's amax and error)
            host = {k: detail(h, cfg) for k, h in hists.items()}
            dev = {k: (float(v[0]), v[1]) for k, v in dev.items()}
            host = {k: (float(v[0]), v[1]) for k, v in host.items()}
        else:
            host = {k: float(methods.get(name).amax(h, cfg)) for k, h in hists.items()}
        bad = {k: (dev[k], host[k]) for k in hists if dev[k] != host[k]}
        assert not bad, bad
        total += len(hists)
    print(f"{spec}: {total} tensors over {len(sets)} histogram sets, all equal")


def test_compute_uses_gpu_and_matches(tmp_path):
    hists = _synthetic()
    hset = store.HistogramSet(hists, {})
    for m in methods.names():
        assert compute(hset, m, device="cuda").tensors == compute(hset, m, device="cpu").tensors


def test_percentile_boundary_exact():
    h = TensorHistogram()
    h.update(np.arange(1, NUM_BINS + 1, dtype=np.float32) / NUM_BINS)
    cfg = methods.make_config("percentile", percentile=50.0)
    assert gpu_methods.amaxes({"h": h}, "percentile", cfg)["h"] == methods.get("percentile").amax(h, cfg)


@pytest.mark.parametrize("samples", [100, 37])
def test_sharded_over_processes_equals_one_gpu(tmp_path, samples):
    """--devices: shards at run-batch boundaries, one process per GPU (two on the same GPU when
    only one is visible), merged: the same histograms and cache bytes as one process."""
    from calibkit.calibration import calibrate

    model = models.conv_net(tmp_path / "conv.onnx", channels=3, hw=32)
    np.save(tmp_path / "x.npy", np.random.default_rng(9).normal(0, 1, (samples, 3, 32, 32)).astype(np.float32))
    devices = [0, 1] if cuda_device_count() >= 2 else [0, 0]
    one = calibrate(model, data=str(tmp_path / "x.npy"), output_dir=tmp_path / "one", batch_size=8, device="cuda")
    many = calibrate(
        model, data=str(tmp_path / "x.npy"), output_dir=tmp_path / "many", batch_size=8, device="cuda", devices=devices
    )
    assert all(same(one.histograms.tensors[k], many.histograms.tensors[k]) for k in one.histograms.tensors)
    assert one.outputs["cache"].read_bytes() == many.outputs["cache"].read_bytes()
    assert many.collection.stats.samples == samples
    print(f"devices {devices}: {samples} samples, caches byte-identical")


@pytest.mark.parametrize("samples", [64, 37])
def test_one_or_two_buffer_sets_give_the_same_histograms(tmp_path, monkeypatch, samples):
    """A second buffer set (overlap) only where the memory bound allows: either way, the same
    histograms as the host reducer."""
    from calibkit.collect.cuda import driver as gpu_driver

    host = _collect(tmp_path, "host", samples, 8, monkeypatch)
    made = []
    real = gpu_driver.DeviceCollector._make_sets

    def spy(self, feed, values, wrapped):
        real(self, feed, values, wrapped)
        made.append(len(self.sets))
        # the first set's outputs are the first run's own (ORT's arena keeps them anyway): not allocated again
        first = self.sets[0].outputs
        assert first and all(first[k].data.ptr == wrapped[k].data.ptr for k in first)
        if len(self.sets) == 2:
            assert all(self.sets[1].outputs[k].data.ptr != wrapped[k].data.ptr for k in first)

    for two in (False, True):
        monkeypatch.setattr(gpu_driver, "second_set", lambda *a, two=two, **k: two)
        monkeypatch.setattr(gpu_driver.DeviceCollector, "_make_sets", spy)
        dev = _collect(tmp_path, "device", samples, 8, monkeypatch)
        assert made and made[-1] == (2 if two else 1)
        assert not [k for k in host.tensors if not same(dev.tensors[k], host.tensors[k])]


def test_gpu_memory_too_small_for_one_run_is_a_clear_error(tmp_path):
    from calibkit.collect.host import collect
    from calibkit.data import Preprocess, open_source
    from calibkit.errors import CalibkitError
    from calibkit.graph.model import input_specs, load

    model = models.conv_net(tmp_path / "conv.onnx", channels=3, hw=32)
    np.save(tmp_path / "x.npy", np.ones((16, 3, 32, 32), np.float32))
    proto = load(model)
    specs = input_specs(proto)
    with pytest.raises(CalibkitError, match="--gpu-memory"):
        collect(
            proto,
            open_source(str(tmp_path / "x.npy"), specs, Preprocess()),
            run_batch=8,
            device="cuda",
            specs=specs,
            gpu_memory=1,
        )
