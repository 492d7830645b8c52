"""Matplotlib figures for the report, returned as base64 PNG data URIs (no files, no network)."""

from __future__ import annotations

import base64
import io
import math

import numpy as np

from calibkit import methods
from calibkit.histogram import NUM_BINS, TensorHistogram

COMPARE_METHODS = ("entropy", "percentile", "minmax", "mse")


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "axes.spines.top": False, "axes.spines.right": False, "svg.hashsalt": "calibkit"})
    return plt


def _uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    _plt().close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _finite(v, floor=-20.0, cap=120.0) -> float:
    if isinstance(v, str):
        v = float(v)
    return cap if v == math.inf else (floor if not math.isfinite(v) else max(floor, min(cap, v)))


def layer_sqnr(cands: list[dict]) -> str | None:
    """Accumulated SQNR per quantized layer, worst first (order of the first INT8 candidate)."""
    int8 = [c for c in cands if c["layers"]]
    if not int8:
        return None
    order = sorted(int8[0]["layers"], key=lambda t: _finite(int8[0]["layers"][t]["sqnr_db"]))
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 0.32 * len(order) + 1.2))
    y = np.arange(len(order))
    for k, c in enumerate(int8):
        vals = [_finite(c["layers"].get(t, {}).get("sqnr_db", -20)) for t in order]
        ax.plot(vals, y, linestyle="none", label=c["label"], alpha=0.85, ms=5, marker="osD^v<>"[k % 7])
    ax.set_yticks(y, order)
    ax.invert_yaxis()
    ax.set_xlabel("SQNR vs FP32 (dB, higher is better); accumulated error at the layer's dequantized input")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return _uri(fig)


def threshold_plot(name: str, h: TensorHistogram, used: dict[str, float]) -> str:
    """|x| histogram of one tensor with each method's threshold drawn."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 2.6))
    edges = np.arange(NUM_BINS + 1) * h.bin_width
    last = int(np.flatnonzero(h.counts)[-1]) + 2 if h.counts.any() else NUM_BINS
    ax.stairs(np.maximum(h.counts[:last], 0.5), edges[: last + 1], fill=True, alpha=0.4, color="#4a6fa5")
    ax.set_yscale("log")
    lines = dict(used)
    for m in COMPARE_METHODS:  # the other methods' defaults, for contrast
        if not any(f"({m}" in label for label in used):
            spec = methods.get(m)
            lines[f"{m} (default)"] = spec.amax(h, spec.config_cls())
    for k, (label, amax) in enumerate(sorted(lines.items(), key=lambda kv: kv[1])):
        ax.axvline(amax, color=f"C{k + 1}", lw=1.5, ls="--" if label in used else ":", label=f"{label}: {amax:.4g}")
    ax.set_title(f"{name}: |x| histogram and thresholds (clipped beyond the line)")
    ax.set_xlabel("|activation|")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _uri(fig)


def error_distribution(name: str, per_cand: dict[str, TensorHistogram]) -> str:
    """Distribution of |candidate - FP32| for one output, one curve per candidate."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 2.6))
    for label, h in per_cand.items():
        if not h.counts.any():
            continue
        last = int(np.flatnonzero(h.counts)[-1]) + 1
        centers = (np.arange(last) + 0.5) * h.bin_width
        cdf = np.cumsum(h.counts[:last]) / h.counts.sum()
        ax.plot(centers, 1 - cdf + 1e-9, label=label, lw=1.4)
    ax.set_xscale("symlog", linthresh=1e-4)
    ax.set_yscale("log")
    ax.set_xlabel(f"|error| of output {name}")
    ax.set_ylabel("fraction of values above")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _uri(fig)


def accuracy_bars(cands: list[dict]) -> str | None:
    rows = [(c["label"], c["accuracy"]) for c in cands if c["accuracy"] is not None]
    if len(rows) < 2:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 0.35 * len(rows) + 0.8))
    labels, vals = zip(*rows)
    ax.barh(range(len(rows)), vals, color=["#888"] + ["#4a6fa5"] * (len(rows) - 1))
    ax.set_yticks(range(len(rows)), labels)
    ax.invert_yaxis()
    lo = max(0.0, min(vals) - 2.0)
    ax.set_xlim(lo, min(100.0, max(vals) + 0.5))
    for i, v in enumerate(vals):
        ax.text(v, i, f" {v:.2f}%", va="center", fontsize=8)
    ax.set_xlabel("task accuracy (%)")
    return _uri(fig)
