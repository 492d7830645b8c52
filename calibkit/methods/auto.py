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

from calibkit.methods.base import REGISTRY, grid, grid_field, make_config, register, spec_of
from calibkit.numerics.formats import INT8, NumberFormat, as_float32, int8_scale, usable_amax
from calibkit.numerics.histogram import TensorHistogram

PERCENTILES = (99.9, 99.99, 99.999)


@dataclass(frozen=True)
class AutoConfig:
    fp8: int = grid_field()  # 1: E(a) on the FP8 E4M3FN grid, s = float32(a) / 448 (auto:fp8=1)

    def __post_init__(self) -> None:
        if self.fp8 not in (0, 1):
            raise ValueError(f"fp8 must be 0 (INT8 grid) or 1 (FP8 E4M3FN grid), got {self.fp8}")


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


def expected_mse(hist: TensorHistogram, amaxes: list[float] | np.ndarray, fmt: NumberFormat = INT8) -> np.ndarray:
    """E(a) (module docstring) of each amax in ``amaxes``, as the table would store it; on the
    grid of ``fmt`` (INT8 by default, FP8 E4M3FN for ``--precision fp8``)."""
    amaxes = np.asarray([usable_amax(a) for a in np.asarray(amaxes, dtype=np.float64).reshape(-1)])
    nz = np.flatnonzero(hist.counts)
    total = float(hist.counts.sum())
    if total == 0:
        return np.zeros(len(amaxes))
    n = hist.counts[nz].astype(np.float64)
    w = hist.bin_width
    c = (nz * w + np.minimum((nz + 1) * w, hist.amax)) / 2.0
    if fmt is not INT8:
        s = np.array([fmt.scale(a) for a in amaxes])[:, None]
        return ((fmt.fake_quant(c[None, :], s) - c) ** 2 * n).sum(axis=1) / total
    s = np.array([int8_scale(a) for a in amaxes])[:, None]
    q = np.clip(np.rint(c / s), -INT8.qmax, INT8.qmax) * s
    return ((q - c) ** 2 * n).sum(axis=1) / total


def choose(hist: TensorHistogram, cfg: AutoConfig) -> tuple[float, dict[str, Any]]:
    """(chosen amax, the fields scales.json records: chosen method, criterion, every candidate)."""
    cands = candidates()
    return choose_among(hist, [float(m.amax(hist, c)) for _, (m, c) in cands], cfg)


def choose_among(hist: TensorHistogram, raw: list[float], cfg: AutoConfig) -> tuple[float, dict[str, Any]]:
    """:func:`choose` given every candidate's amax (in :func:`candidates`' order), however they
    were computed (on the host, or batched on the GPU: methods/cuda.py)."""
    cands = candidates()
    amaxes = [as_float32(float(a)) for a in raw]
    fmt = grid(cfg)
    errs = expected_mse(hist, amaxes, fmt)
    k = int(np.argmin(errs))  # the first of equal minima: the fixed order breaks ties
    table = {spec: {"amax": a, "expected_mse": float(e)} for (spec, _), a, e in zip(cands, amaxes, errs)}
    criterion = "expected_mse" if fmt is INT8 else f"expected_mse_{fmt.name}"
    return amaxes[k], {"method": cands[k][0], "criterion": criterion, "candidates": table}


@register(
    "auto", AutoConfig, "per tensor, the candidate (other methods) with the least expected INT8 MSE", detail=choose
)
def auto_amax(hist: TensorHistogram, cfg: AutoConfig) -> float:
    return choose(hist, cfg)[0]
