"""The number formats calibkit quantizes to, owned here and nowhere else.

``INT8`` is symmetric signed INT8 as TensorRT and ONNX Runtime use it: levels -127..127, zero
point 0, scale = float32(amax) / 127 computed in float32 (one rounding). Its ONNX element type
and ONNX Runtime ``QuantType`` name are here too, so exporters, methods and readers share one
grid. ``FP8`` is FP8 E4M3FN (OCP 8-bit float, no infinities: largest finite 448, 3 mantissa
bits, subnormals down to 2**-9), zero point 0, per-tensor scale = float32(amax) / 448 as
TensorRT and ModelOpt compute it; ONNX opset 19's ``FLOAT8E4M3FN`` (element type 17).
``fake_quant`` rounds to either grid (round to nearest even, saturating). Helpers for the
float32 amax a scale table stores follow."""

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

    min_opset: int = 13  # first ONNX opset whose QuantizeLinear/DequantizeLinear take this type

    def scale(self, amax: float) -> float:
        """float32(amax) / qmax in float32 arithmetic (one rounding), as ORT and TensorRT compute it."""
        return float(np.float32(amax) / np.float32(self.qmax))

    def levels(self, x: np.ndarray) -> np.ndarray:
        """``x`` (already divided by the scale) rounded to this format's grid and saturated,
        as float64: what QuantizeLinear stores (round half to even)."""
        x = np.clip(np.asarray(x, dtype=np.float64), -self.qmax, self.qmax)
        if self.name == "int8":
            return np.rint(x)
        # E4M3FN: 3 mantissa bits, normal exponents from -6, subnormal step 2**-9.
        _, e = np.frexp(x)  # |x| = m * 2**e, m in [0.5, 1): the leading bit is 2**(e-1)
        step = np.ldexp(1.0, np.maximum(e - 1, FP8_MIN_EXP) - 3)
        return np.clip(np.rint(x / step) * step, -self.qmax, self.qmax)

    def fake_quant(self, x: np.ndarray, scale) -> np.ndarray:
        """Quantize-dequantize ``x`` with ``scale`` (broadcast): levels(x / scale) * scale."""
        s = np.asarray(scale, dtype=np.float64)
        return self.levels(np.asarray(x, dtype=np.float64) / s) * s


FP8_MIN_EXP = -6  # E4M3FN's smallest normal exponent (bias 7)
INT8 = NumberFormat("int8", 127.0, 3, "QInt8")  # 3: onnx.TensorProto.INT8 (onnx is not imported here)
FP8 = NumberFormat("fp8", 448.0, 17, "QFLOAT8E4M3FN", min_opset=19)  # 17: onnx.TensorProto.FLOAT8E4M3FN
FORMATS = {f.name: f for f in (INT8, FP8)}
PRECISIONS = tuple(FORMATS)  # the --precision choices; INT8 first (the default)


def number_format(name: str) -> NumberFormat:
    """The format called ``name`` (``int8`` or ``fp8``); ValueError naming the choices otherwise."""
    try:
        return FORMATS[name]
    except KeyError:
        raise ValueError(f"precision {name!r} must be one of {', '.join(PRECISIONS)}") from None


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
