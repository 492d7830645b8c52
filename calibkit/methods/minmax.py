"""MinMax threshold: the exact max |x| seen (TensorRT's MinMaxCalibration)."""

from __future__ import annotations

from dataclasses import dataclass

from calibkit.histogram import TensorHistogram
from calibkit.methods.base import register


@dataclass(frozen=True)
class MinMaxConfig:
    pass


@register("minmax", MinMaxConfig, "max |x| over all calibration data")
def minmax_amax(hist: TensorHistogram, cfg: MinMaxConfig) -> float:
    return hist.amax
