"""The float transforms ``quantize`` applies before calibrating again: cross-layer equalization
(data-free) and SmoothQuant, whose alpha is chosen per tensor here.

Alpha: for each SmoothQuant target, the per-channel maxima come from every calibration value
(smoothquant.ChannelMax, exact and mergeable); the choice among "off" and
``SMOOTHQUANT_ALPHAS`` minimises the INT8 error of the consumers' outputs on sampled rows,
``||q(X/s) q(s W) - X W||^2 / Var[X W]`` (activation per tensor at the smoothed maximum, weights
per output channel). Off wins ties, so a tensor without outlier channels is left alone.
"""

from __future__ import annotations

import numpy as np
import onnx

from calibkit.numerics.formats import INT8
from calibkit.recovery import equalize as EQ
from calibkit.recovery import gather
from calibkit.recovery import smoothquant as SQ

ROWS = 4096


def _fq(x: np.ndarray, amax: float) -> np.ndarray:
    s = amax / INT8.qmax if amax > 0 else 1.0
    return np.clip(np.rint(x / s), -INT8.qmax, INT8.qmax) * s


def _weights(ed: EQ.ConstEditor, tgt: SQ.Target) -> list[np.ndarray]:
    """The consumers' weights as [K, N] (K: the smoothed channels)."""
    out = []
    for i, k, ax in tgt.weights:
        w = ed.const(ed.nodes[i].input[k]).astype(np.float64)
        out.append(np.moveaxis(w, ax, 0).reshape(tgt.channels, -1))
    return out


def alpha_error(x: np.ndarray, act_max: np.ndarray, ws: list[np.ndarray], s: np.ndarray) -> float:
    xs = x / s
    xq = _fq(xs, float((act_max / s).max()))
    total = 0.0
    for w in ws:
        sw = w * s[:, None]
        sc = np.abs(sw).max(axis=0) / INT8.qmax
        sc = np.where(sc > 0, sc, 1.0)
        wq = np.clip(np.rint(sw / sc), -INT8.qmax, INT8.qmax) * sc
        y = x @ w
        var = float(((y - y.mean(0)) ** 2).mean())
        if var > 0:
            total += float(((xq @ wq - y) ** 2).mean()) / var
    return total


def equalize(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[dict]]:
    """Cross-layer equalization of every pair (the model unchanged when there is none)."""
    if not EQ.pairs(model):
        return model, []
    return EQ.equalize(model)


def smoothquant(model: onnx.ModelProto, feeds, o) -> tuple[onnx.ModelProto, list[dict]]:
    """SmoothQuant with alpha per tensor (module docstring); one row per candidate tensor."""
    found = SQ.targets(model)
    rows_doc: list[dict] = []
    if not found:
        return model, rows_doc
    maxima = {t: SQ.ChannelMax(axis=tgt.axis) for t, tgt in found.items()}
    rows: dict[str, list[np.ndarray]] = {t: [] for t in found}
    per_batch = max(ROWS // max(len(feeds), 1), 16)
    rng = np.random.default_rng(0)
    for got in gather.tensors(model, list(found), feeds):
        for t, tgt in found.items():
            a = got[t]
            maxima[t].update(a)
            r = np.moveaxis(a, tgt.axis, -1).reshape(-1, tgt.channels)
            pick = np.sort(rng.choice(len(r), size=min(per_batch, len(r)), replace=False))
            rows[t].append(r[pick].astype(np.float64))
    ed = EQ.ConstEditor(model)
    chosen: dict[float, dict[str, np.ndarray]] = {}
    for t, tgt in found.items():
        act = maxima[t].value
        x = np.concatenate(rows[t])
        ws = _weights(ed, tgt)
        wmax = np.max([np.abs(w).max(axis=1) for w in ws], axis=0)
        alphas = _alphas(o)
        errs = {None: alpha_error(x, act, ws, np.ones_like(act))}
        for a in alphas:
            errs[a] = alpha_error(x, act, ws, SQ.smoothing_scales(act, wmax, a))
        best = min(errs, key=lambda a: (errs[a], a is not None)) if o.smoothquant == "auto" else alphas[0]
        tried = {str(k): v for k, v in errs.items()}
        rows_doc.append({"tensor": t, "alpha": best, "error_off": errs[None], "error": errs[best], "tried": tried})
        if best is not None:
            chosen.setdefault(best, {})[t] = act
    for a, acts in sorted(chosen.items()):
        model, recs = SQ.smooth(model, acts, a)
        by_t = {r["tensor"]: r for r in recs}
        for row in rows_doc:
            if row["tensor"] in by_t:
                row.update({k: v for k, v in by_t[row["tensor"]].items() if k != "alpha"})
    return model, rows_doc


def _alphas(o) -> tuple[float, ...]:
    from calibkit.quantize.options import SMOOTHQUANT_ALPHAS

    return SMOOTHQUANT_ALPHAS if o.smoothquant == "auto" else (float(o.smoothquant),)
