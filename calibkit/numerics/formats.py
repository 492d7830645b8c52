"""The number formats calibkit quantizes to, owned here and nowhere else.

``INT8`` is symmetric signed INT8 as TensorRT and ONNX Runtime use it: levels -127..127, zero
point 0, scale = float32(amax) / 127 computed in float32 (one rounding). Its ONNX element type
and ONNX Runtime ``QuantType`` name are here too, so exporters, methods and readers share one
grid. Helpers for the float32 amax a scale table stores follow."""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class NumberFormat:
    name: str
    qmax: float  # largest representable magnitude, in steps: amax maps to it
    onnx_type: int  # onnx.TensorProto element type of the quantized tensor
    ort_quant_type: str  # onnxruntime.quantization.QuantType member name

    def scale(self, amax: float) -> float:
        """float32(amax) / qmax in float32 arithmetic (one rounding), as ORT and TensorRT compute it."""
        return float(np.float32(amax) / np.float32(self.qmax))


INT8 = NumberFormat("int8", 127.0, 3, "QInt8")  # 3: onnx.TensorProto.INT8 (onnx is not imported here)

DEGENERATE_AMAX = 1.0  # tensors with no non-zero finite value: any positive scale is exact
FLOAT32_MAX = float(np.finfo(np.float32).max)
TINY_AMAX = float(np.finfo(np.float32).tiny) * INT8.qmax  # below this, amax / 127 is not a normal float32


def as_float32(x: float) -> float:
    """``x`` rounded to float32 (inf beyond its range, never an OverflowError)."""
    if not math.isfinite(x) or abs(x) > FLOAT32_MAX:
        return math.copysign(math.inf, x) if not math.isnan(x) else math.nan
    return struct.unpack("<f", struct.pack("<f", x))[0]


def int8_scale(amax: float) -> float:
    """float32(amax) / 127 in float32 arithmetic (one rounding), as ORT and TensorRT compute it."""
    return INT8.scale(amax)


def degenerate(amax: float) -> bool:
    """No usable INT8 scale from this (float32) amax: not a positive normal number after / 127."""
    return not (math.isfinite(amax) and amax >= TINY_AMAX)


def usable_amax(amax: float) -> float:
    """The amax a scale table stores for a method's raw ``amax``: float32, and
    ``DEGENERATE_AMAX`` when it is not a positive normal number (an all-zero tensor)."""
    a = as_float32(float(amax))
    return DEGENERATE_AMAX if degenerate(a) else a
