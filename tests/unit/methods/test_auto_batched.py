"""``auto`` batched (methods/cuda.py ``_auto``): each candidate method once for all tensors, then
the host's choice among them. Here the candidates' batched functions are host stand-ins, so the
plumbing is checked on any machine; tests/gpu checks it with the GPU's own."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from calibkit import methods
from calibkit.methods import auto
from calibkit.methods.base import REGISTRY
from calibkit.numerics.histogram import TensorHistogram


def _hists() -> dict[str, TensorHistogram]:
    rng = np.random.default_rng(0)
    out = {}
    for i, x in enumerate(
        [rng.normal(size=5000), rng.laplace(size=5000) * 3, np.r_[rng.normal(size=4000), 80.0], np.zeros(10)]
    ):
        h = TensorHistogram()
        h.update(x.astype(np.float32))
        out[f"t{i}"] = h
    out["empty"] = TensorHistogram()
    return out


def test_batched_auto_equals_host_choice(monkeypatch):
    pytest.importorskip("scipy")
    from calibkit.methods import cuda

    calls = []

    def batched(name):
        def fn(hists, cfg):
            calls.append(name)
            return {n: float(REGISTRY[name].amax(h, cfg)) for n, h in hists.items()}

        return fn

    for name in ("entropy", "mse", "percentile", "minmax"):
        monkeypatch.setitem(REGISTRY, name, dataclasses.replace(REGISTRY[name], cuda=batched(name)))
    hists = _hists()
    cfg = methods.make_config("auto")
    got = cuda._auto(hists, cfg)
    want = {n: auto.choose(h, cfg) for n, h in hists.items()}
    assert got == want
    # one batched call per candidate, not per tensor
    assert sorted(calls) == sorted(["entropy", "minmax", "mse", "percentile", "percentile", "percentile"])
