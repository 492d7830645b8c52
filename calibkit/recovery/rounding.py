"""INT8 weights: per-channel scales, nearest rounding, and adaptive rounding (AdaRound).

Per-channel symmetric INT8 as ONNX Runtime's quantizer and TensorRT write it: ``s = max|w| / 127``
per output channel. Adaptive rounding (Nagel et al. 2020, "Up or Down? Adaptive Rounding for
Post-Training Quantization") chooses, per weight, floor or ceil of ``w / s`` to minimise the
layer's output error on calibration data rather than each weight's own error. Here that error
is the quadratic of stats.py (quantized upstream input, mean removed, since bias correction
takes the mean), so an iteration costs one [R, K] x [K, K] product per group and no data.

The relaxation: ``h(V) = clip(sigmoid(V) (zeta - gamma) + gamma, 0, 1)``, weights
``s (floor(w/s) + h(V))``, loss ``output error / Var[w.x] + lam * sum(1 - |2h - 1|^beta)`` with
beta annealed from 20 to 2 after a warm-up, Adam on V; the integers are ``floor + (h >= 0.5)``.
The element holding a channel's max |w| stays at +-127, so the scale that a quantizer recomputes
from the rounded float weights is the same one (tested: ORT writes exactly these integers).
A layer keeps nearest rounding if the rounded result is not better on the calibration error.
The iterations run on the GPU through CuPy when one is usable (``xp``), else NumPy; the
choice of integers can differ in a weight whose relaxed value ends at 0.5 +- float rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from calibkit.numerics.formats import INT8
from calibkit.recovery.stats import Moments, output_error, output_variance

ZETA, GAMMA = 1.1, -0.1


def channel_scales(w: np.ndarray) -> np.ndarray:
    """[G, R] float32 scales of ``w`` [G, R, K], as the quantizer computes them (0 for a zero row)."""
    amax = np.abs(w).max(axis=2).astype(np.float32)
    return amax / np.float32(INT8.qmax)


def nearest(w: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Integers of ``w`` [G, R, K] with scales ``s`` [G, R], round half to even as ORT does."""
    safe = np.where(s > 0, s, 1.0)[..., None]
    q = np.rint(w.astype(np.float32) / safe.astype(np.float32))
    return np.clip(q, -INT8.qmax, INT8.qmax) * (s[..., None] > 0)


def dequantize(q: np.ndarray, s: np.ndarray) -> np.ndarray:
    return (q * s[..., None]).astype(np.float32)


@dataclass
class RoundingResult:
    q: np.ndarray  # [G, R, K] integers (as float)
    error_nearest: float  # mean output error / mean output variance, nearest rounding
    error: float  # the same with the chosen integers
    iterations: int
    kept_nearest: bool


def _h(v, xp=np):
    sig = 1.0 / (1.0 + xp.exp(-v))
    raw = sig * (ZETA - GAMMA) + GAMMA
    h = xp.clip(raw, 0.0, 1.0)
    dh = xp.where((raw > 0) & (raw < 1), sig * (1 - sig) * (ZETA - GAMMA), 0.0)
    return h, dh


def array_module(device: str = "auto"):
    """CuPy when ``device`` allows it and a GPU is usable, else NumPy."""
    if device == "cpu":
        return np
    from calibkit.methods.cuda import available

    if not available():
        return np
    import cupy

    return cupy


def _relative(m: Moments, w: np.ndarray, v: np.ndarray, var: float) -> float:
    return float(output_error(m, w, v).mean() / var)


def adaround(
    m: Moments,
    w: np.ndarray,
    iterations: int = 1000,
    lam: float = 0.01,
    lr: float = 0.05,
    warmup: float = 0.2,
    seed: int = 0,
    xp=np,
) -> RoundingResult:
    """Adaptive rounding of ``w`` [G, R, K] against the input moments ``m`` (``xp``: numpy or
    cupy for the iterations)."""
    w = w.astype(np.float64)
    s = channel_scales(w).astype(np.float64)
    q_near = nearest(w, s.astype(np.float32)).astype(np.float64)
    var = float(output_variance(m, w).mean())
    if not var > 0 or iterations <= 0:
        e = _relative(m, w, dequantize(q_near, s), var) if var > 0 else 0.0
        return RoundingResult(q_near, e, e, 0, True)
    err_near = _relative(m, w, q_near * s[..., None], var)
    safe = np.where(s > 0, s, 1.0)[..., None]
    ratio = w / safe
    base = np.floor(ratio)
    rest = np.clip(ratio - base, 0.01, 0.99)
    v = -np.log((ZETA - GAMMA) / (rest - GAMMA) - 1.0)
    # the channel's largest element stays at +-127: the rescaled weights keep their scale
    pinned = np.abs(w) >= np.abs(w).max(axis=2, keepdims=True)
    pinned |= s[..., None] <= 0
    hq = xp.asarray(m.cov_qq())
    target = xp.asarray(np.einsum("grk,glk->grl", w, m.cov_qx()))  # rows of w @ Cov(x, x~) = Cov(x~, x) w
    n_rows = w.shape[0] * w.shape[1]
    v, base, sx = xp.asarray(v), xp.asarray(base), xp.asarray(s[..., None])
    q_near_x, pinned_x = xp.asarray(q_near), xp.asarray(pinned)
    mom, vel = xp.zeros_like(v), xp.zeros_like(v)
    b1, b2, eps = 0.9, 0.999, 1e-8
    warm = int(warmup * iterations)
    for it in range(iterations):
        h, dh = _h(v, xp)
        vw = xp.where(pinned_x, q_near_x, xp.clip(base + h, -INT8.qmax, INT8.qmax)) * sx
        grad_w = 2.0 * (xp.matmul(vw, hq) - target) / (n_rows * var)  # d(mean error / var) / d vw
        g = grad_w * sx * dh
        if it >= warm:
            beta = 20.0 + (2.0 - 20.0) * (it - warm) / max(iterations - warm - 1, 1)
            t = 2.0 * h - 1.0
            g += lam * (-beta * xp.abs(t) ** (beta - 1.0) * xp.sign(t) * 2.0) * dh / w.size
        g = xp.where(pinned_x, 0.0, g)
        mom = b1 * mom + (1 - b1) * g
        vel = b2 * vel + (1 - b2) * g * g
        mh = mom / (1 - b1 ** (it + 1))
        vh = vel / (1 - b2 ** (it + 1))
        v -= lr * mh / (xp.sqrt(vh) + eps)
    h, _ = _h(v, xp)
    h = h.get() if xp is not np else h
    base = base.get() if xp is not np else base
    q = np.where(pinned, q_near, np.clip(base + (h >= 0.5), -INT8.qmax, INT8.qmax))
    err = _relative(m, w, q * s[..., None], var)
    if not err < err_near:
        return RoundingResult(q_near, err_near, err_near, iterations, True)
    return RoundingResult(q, err_near, err, iterations, False)
