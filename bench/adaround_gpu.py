"""Adaptive rounding of one layer on the CPU (NumPy) and the GPU (CuPy): time and agreement.

    python bench/adaround_gpu.py [--k 480 --rows 480 --iterations 1000]

A layer of R output channels reading K inputs, moments from 8192 correlated ReLU rows quantized
per tensor (as recovery sees them); each backend runs in this process, the GPU after a warm-up.
Prints seconds per layer, the relative output error each reaches and the share of integers on
which they differ (a weight whose relaxed value ends at 0.5 +- rounding may go either way).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from calibkit.recovery.rounding import adaround, array_module
from calibkit.recovery.stats import Moments


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, default=480)
    ap.add_argument("--rows", type=int, default=480)
    ap.add_argument("--iterations", type=int, default=1000)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    x = np.maximum(rng.normal(size=(8192, a.k)) @ rng.normal(size=(a.k, a.k)) / np.sqrt(a.k), 0).astype(np.float32)
    s = np.abs(x).max() / 127
    xq = (np.clip(np.rint(x / s), -127, 127) * s).astype(np.float32)
    m = Moments(1, a.k)
    m.update(x[None], xq[None])
    w = (rng.normal(size=(1, a.rows, a.k)) * 0.05).astype(np.float32)
    results = {}
    for name, xp in (("numpy", np), ("cupy", array_module("auto"))):
        if name == "cupy" and xp is np:
            print("cupy: no usable GPU/CuPy here")
            continue
        if name == "cupy":
            adaround(m, w, iterations=10, xp=xp)  # kernels compiled
        t0 = time.perf_counter()
        r = adaround(m, w, iterations=a.iterations, xp=xp)
        results[name] = (time.perf_counter() - t0, r)
        print(f"{name}: {results[name][0]:.2f} s/layer, error nearest {r.error_nearest:.4e} -> {r.error:.4e}")
    if len(results) == 2:
        diff = float(np.mean(results["numpy"][1].q != results["cupy"][1].q))
        print(f"speed-up {results['numpy'][0] / results['cupy'][0]:.1f}x; integers differing: {diff:.2e}")


if __name__ == "__main__":
    main()
