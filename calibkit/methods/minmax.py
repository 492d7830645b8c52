"""MinMax threshold: the exact max |x| seen (TensorRT's MinMaxCalibration)."""

from __future__ import annotations

from dataclasses import dataclass

from calibkit.methods.base import register
from calibkit.numerics.histogram import TensorHistogram


@dataclass(frozen=True)
class MinMaxConfig:
    pass


@register("minmax", MinMaxConfig, "max |x| over all calibration data")
def minmax_amax(hist: TensorHistogram, cfg: MinMaxConfig) -> float:
    return hist.amax
