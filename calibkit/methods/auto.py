"""Auto threshold: per tensor, the candidate amax with the least expected INT8 quantization MSE.

Candidates, in this fixed order (ties go to the earlier): every other registered method at its
defaults, sorted by name, with ``percentile`` at 99.9, 99.99 and 99.999. The criterion is
computed exactly on the histogram, each bin standing for the midpoint of the values it can
hold (``[j w, min((j+1) w, max|x|)]``):

    E(a) = sum_j n_j (q(c_j) - c_j)**2 / sum_j n_j,   q(c) = clip(rint(c / s), -127, 127) * s

with ``s`` the INT8 scale the table will store for ``a`` (float32(a) / 127 in float32), so
values past ``127 s`` cost their clipping error and values inside their rounding error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from calibkit.methods.base import REGISTRY, make_config, register, spec_of
from calibkit.numerics.formats import INT8, as_float32, int8_scale, usable_amax
from calibkit.numerics.histogram import TensorHistogram

PERCENTILES = (99.9, 99.99, 99.999)


@dataclass(frozen=True)
class AutoConfig:
    pass


def candidates() -> list[tuple[str, Any]]:
    """(spec, (method, config)) of every candidate, in the tie-breaking order."""
    out = []
    for name in sorted(REGISTRY):
        if name == "auto":
            continue
        configs = (
            [make_config(name, percentile=p) for p in PERCENTILES] if name == "percentile" else [make_config(name)]
        )
        out.extend(
            (f"percentile:{cfg.percentile!r}" if name == "percentile" else spec_of(name, cfg), (REGISTRY[name], cfg))
            for cfg in configs
        )
    return out


def expected_mse(hist: TensorHistogram, amaxes: list[float] | np.ndarray) -> np.ndarray:
    """E(a) (module docstring) of each amax in ``amaxes``, as the table would store it."""
    amaxes = np.asarray([usable_amax(a) for a in np.asarray(amaxes, dtype=np.float64).reshape(-1)])
    nz = np.flatnonzero(hist.counts)
    total = float(hist.counts.sum())
    if total == 0:
        return np.zeros(len(amaxes))
    n = hist.counts[nz].astype(np.float64)
    w = hist.bin_width
    c = (nz * w + np.minimum((nz + 1) * w, hist.amax)) / 2.0
    s = np.array([int8_scale(a) for a in amaxes])[:, None]
    q = np.clip(np.rint(c / s), -INT8.qmax, INT8.qmax) * s
    return ((q - c) ** 2 * n).sum(axis=1) / total


def choose(hist: TensorHistogram, cfg: AutoConfig) -> tuple[float, dict[str, Any]]:
    """(chosen amax, the fields scales.json records: chosen method, criterion, every candidate)."""
    cands = candidates()
    amaxes = [as_float32(float(m.amax(hist, c))) for _, (m, c) in cands]
    errs = expected_mse(hist, amaxes)
    k = int(np.argmin(errs))  # the first of equal minima: the fixed order breaks ties
    table = {spec: {"amax": a, "expected_mse": float(e)} for (spec, _), a, e in zip(cands, amaxes, errs)}
    return amaxes[k], {"method": cands[k][0], "criterion": "expected_mse", "candidates": table}


@register(
    "auto", AutoConfig, "per tensor, the candidate (other methods) with the least expected INT8 MSE", detail=choose
)
def auto_amax(hist: TensorHistogram, cfg: AutoConfig) -> float:
    return choose(hist, cfg)[0]
