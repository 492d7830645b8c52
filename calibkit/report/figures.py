"""Matplotlib figures for the report, returned as base64 PNG data URIs (no files, no network)."""

from __future__ import annotations

import base64
import io
import math

import numpy as np

from calibkit import methods
from calibkit.numerics.histogram import NUM_BINS, TensorHistogram

COMPARE_METHODS = ("entropy", "percentile", "minmax", "mse")
DASHES = ((0, (6, 2)), (0, (1, 1.5)), (0, (6, 2, 1, 2)), (0, (3, 1)), (0, (8, 2, 1, 2, 1, 2)), (0, (2, 3)), "-")


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {"font.size": 9, "axes.spines.top": False, "axes.spines.right": False, "svg.hashsalt": "calibkit"}
    )
    return plt


def _t(text: str) -> str:
    """User text (tensor, output, candidate names) drawn literally: a "$...$" is not TeX."""
    return str(text).replace("$", r"\$")


REFERENCE_COLOR = "#888888"
_PALETTE = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#9467bd",
    "#ff7f0e",
    "#17becf",
    "#8c564b",
    "#e377c2",
    "#bcbd22",
    "#393b79",
)


def palette(labels: list[str]) -> dict[str, str]:
    """One colour per candidate, the same in every figure of a report (reference grey)."""
    out, k = {}, 0
    for label in labels:
        if label == "ort-fp32":
            out[label] = REFERENCE_COLOR
        elif label not in out:
            out[label] = _PALETTE[k % len(_PALETTE)]
            k += 1
    return out


def _uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    _plt().close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _finite(v, floor=-20.0, cap=120.0) -> float:
    if isinstance(v, str):
        v = float(v)
    return cap if v == math.inf else (floor if not math.isfinite(v) else max(floor, min(cap, v)))


WORST_PER_CANDIDATE = 15


def worst_layers(cands: list[dict], k: int = WORST_PER_CANDIDATE) -> list[str]:
    """The union of every INT8 candidate's ``k`` worst layers, worst (over candidates) first."""
    int8 = [c for c in cands if c["layers"]]
    chosen: set[str] = set()
    for c in int8:
        chosen.update(sorted(c["layers"], key=lambda t: (_finite(c["layers"][t]["sqnr_db"]), t))[:k])
    worst = {t: min(_finite(c["layers"][t]["sqnr_db"]) for c in int8 if t in c["layers"]) for t in chosen}
    return sorted(chosen, key=lambda t: (worst[t], t))


def layer_sqnr(cands: list[dict], colors: dict[str, str]) -> str | None:
    """Accumulated SQNR per quantized layer: every candidate's worst layers, worst first."""
    int8 = [c for c in cands if c["layers"]]
    if not int8:
        return None
    order = worst_layers(cands)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 0.32 * len(order) + 1.2))
    y = np.arange(len(order))
    for k, c in enumerate(int8):
        vals = [_finite(c["layers"][t]["sqnr_db"]) if t in c["layers"] else np.nan for t in order]
        ax.plot(
            vals,
            y,
            linestyle="none",
            label=_t(c["label"]),
            alpha=0.85,
            ms=5,
            marker="osD^v<>"[k % 7],
            color=colors.get(c["label"]),
        )
    ax.set_yticks(y, [_t(t) for t in order])
    ax.invert_yaxis()
    ax.set_xlabel("SQNR vs FP32 (dB, higher is better); accumulated error at the layer's dequantized input")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return _uri(fig)


def threshold_plot(name: str, h: TensorHistogram, used: dict[str, float], colors: dict[str, str]) -> str:
    """|x| histogram of one tensor with each method's threshold drawn (empty bins left empty)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 2.6))
    last = (
        min(NUM_BINS, int(np.flatnonzero(h.counts)[-1]) + 2) if h.counts.any() else NUM_BINS
    )  # one empty bin after the data
    shown = np.where(h.counts[:last] > 0, h.counts[:last], np.nan)  # NaN: a gap, not a floor
    ax.stairs(shown, np.arange(last + 1) * h.bin_width, fill=True, alpha=0.45, color="#4a6fa5")
    ax.set_yscale("log")
    lines = dict(used)
    for m in COMPARE_METHODS:  # the other methods' defaults, for contrast
        if not any(f"({m}" in label for label in used):
            spec = methods.get(m)
            lines[f"{m} (default)"] = spec.amax(h, spec.config_cls())
    # Lines at the same amax are one line with every name (else the last drawn hides the others);
    # each line has its own dash pattern, so methods differ by more than a shade of grey.
    groups: dict[float, list[str]] = {}
    for label, amax in sorted(lines.items(), key=lambda kv: (kv[1], kv[0] not in used, kv[0])):
        groups.setdefault(float(amax), []).append(label)
    greys = iter(("#444444", "#777777", "#999999", "#bbbbbb"))
    dashes = iter(DASHES)
    for amax, labels in groups.items():
        mine = [lb for lb in labels if lb in used]
        color = colors.get(mine[0]) if mine else next(greys, "#aaaaaa")
        ls = next(dashes, (0, (1, 1)))
        ax.axvline(amax, color=color, lw=1.8 if mine else 1.3, ls=ls, label=_t(f"{' = '.join(labels)}: {amax:.4g}"))
    ax.set_title(_t(f"{name}: |x| histogram and thresholds (clipped beyond the line)"))
    ax.set_xlabel("|activation|")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _uri(fig)


def error_distribution(name: str, per_cand: dict[str, TensorHistogram], colors: dict[str, str]) -> str:
    """Fraction of |candidate - FP32| values above x for one output; each curve ends at its data."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 2.6))
    for label, h in per_cand.items():
        total = int(h.counts.sum())
        if not total:
            continue
        upper = np.arange(1, NUM_BINS + 1) * h.bin_width  # values above this edge
        above = total - np.cumsum(h.counts)
        keep = above > 0
        if keep.any():
            ax.step(upper[keep], above[keep] / total, where="post", label=_t(label), lw=1.4, color=colors.get(label))
        else:  # every error in the first bin: one point at its edge
            ax.plot(
                [h.bin_width],
                [1.0 / total],
                marker="o",
                label=_t(f"{label} (all below {h.bin_width:.2g})"),
                color=colors.get(label),
            )
    ax.set_xscale("symlog", linthresh=1e-4)
    ax.set_yscale("log")
    ax.set_xlabel(_t(f"|error| of output {name}"))
    ax.set_ylabel("fraction of values above")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _uri(fig)


def accuracy_bars(cands: list[dict], colors: dict[str, str]) -> str | None:
    rows = [
        (c["label"], float(c["accuracy"]))
        for c in cands
        if isinstance(c["accuracy"], (int, float)) and math.isfinite(c["accuracy"])  # the table says "inf"/"nan"
    ]
    if len(rows) < 2:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 0.35 * len(rows) + 0.8))
    labels, vals = zip(*rows)
    ax.barh(range(len(rows)), vals, color=[colors.get(lab, REFERENCE_COLOR) for lab in labels])
    ax.set_yticks(range(len(rows)), [_t(lab) for lab in labels])
    ax.invert_yaxis()
    lo = max(0.0, min(vals) - 2.0)
    ax.set_xlim(lo, min(100.0, max(vals) + 0.5))
    for i, v in enumerate(vals):
        ax.text(v, i, f" {v:.2f}%", va="center", fontsize=8)
    ax.set_xlabel("task accuracy (%)")
    return _uri(fig)
