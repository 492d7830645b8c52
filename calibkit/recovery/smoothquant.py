"""SmoothQuant: move activation outlier channels into MatMul/Gemm weights, a pure graph transform.

Xiao, Lin, Seznec, Wu, Demouth, Han, "SmoothQuant: Accurate and Efficient Post-Training
Quantization for Large Language Models" (arXiv 2211.10438, 2022; ICML 2023). A few channels j of
a transformer activation X are far larger than the rest, so a per-tensor INT8 scale crushes the
others. With s_j = max|X_j|^alpha / max|W_j|^(1 - alpha), X' = X / s and W' = diag(s) W give the
same X W, with the activation's channel ranges flattened and part of the range moved into the
weight rows (which are quantized per output channel). The division by s is folded into constants
of the node that produces X, so no node is added.

A target (:func:`targets`) is an activation read only by MatMul (input 0, constant weight of rank
>= 2 at input 1) and Gemm (input 0, constant B) nodes, Shape/Size readers aside; Q/K/V projections
sharing one LayerNorm output share one s (the max over all consumers' weight rows). Its producer
must hold per-channel constants on the channel axis:

- LayerNormalization with constant scale (and bias): both divided by s;
- ``Mul(x, c)`` with a constant c (the gamma of a decomposed LayerNorm, GELU's final 0.5): c / s;
- ``Add(y, c)`` with a constant c, where y is read by the Add alone and is itself a foldable
  producer (``Add(Mul(x, gamma), beta)`` of Paddle2ONNX/PyTorch LayerNorm tails, a MatMul + bias):
  c / s and y's fold;
- MatMul / Gemm with constant weight (and bias): output columns divided by s;
- Conv with constant weight (and bias), seen through Transpose (channel-first to channel-last):
  output channels divided by s;
- Transpose of a tensor read by the Transpose alone: the fold of its input, axis permuted.

Anything else is left alone and :func:`ineligible` says why. Constants may be initializers or
Constant nodes; one read elsewhere is copied before it is edited. The input model is never
modified. Channel maxima come from :class:`ChannelMax`, run by the caller over calibration data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from calibkit.errors import CalibkitError
from calibkit.recovery.equalize import ConstEditor, along, label, range_ratio

S_CLAMP = (1e-5, 1e5)  # s is kept in this range; a zero weight row counts as 1e-5


class ChannelMax:
    """Exact, mergeable per-channel max |x| over every axis but ``axis`` (the channel axis of a
    :class:`Target`: -1 for MatMul and Gemm transA=0). NaNs are ignored. A max of float64 values
    is exact, so any split of the data and any merge order give the same bytes."""

    def __init__(self, axis: int = -1) -> None:
        self.axis = axis
        self._max: np.ndarray | None = None

    def update(self, a: np.ndarray) -> None:
        a = np.asarray(a)
        if not -a.ndim <= self.axis < a.ndim:
            raise CalibkitError(f"ChannelMax(axis={self.axis}) cannot reduce an array of shape {a.shape}")
        rows = np.moveaxis(np.abs(a), self.axis, -1).reshape(-1, a.shape[self.axis])
        if rows.shape[0]:
            self._fold(np.fmax.reduce(rows, axis=0).astype(np.float64))

    def merge(self, other: ChannelMax) -> ChannelMax:
        if other._max is not None:
            self._fold(other._max)
        return self

    def _fold(self, m: np.ndarray) -> None:
        if self._max is None:
            self._max = m.copy()
        elif m.shape != self._max.shape:
            raise CalibkitError(
                f"ChannelMax: {m.shape[0]} channels after {self._max.shape[0]}; feed one tensor's batches"
            )
        else:
            np.fmax(self._max, m, out=self._max)

    @property
    def value(self) -> np.ndarray:
        if self._max is None:
            raise CalibkitError("ChannelMax has seen no values; update it with at least one batch")
        return self._max.copy()


@dataclass(frozen=True)
class Target:
    """An activation SmoothQuant can rescale, and where s goes."""

    tensor: str
    consumers: tuple[str, ...]  # MatMul/Gemm node names
    producer: str  # the node whose constants take 1/s (the outer one of a chain)
    kind: str  # e.g. "LayerNormalization", "Add(Mul)", "Add(MatMul)", "Transpose(Conv)"
    axis: int  # the channel axis of the tensor, negative (ChannelMax's axis)
    channels: int
    weights: tuple[tuple[int, int, int], ...]  # (node index, input slot, axis): multiplied by s
    folds: tuple[tuple[int, int, int], ...]  # (node index, input slot, axis): divided by s


class _Skip(Exception):
    pass


def _attr(ed: ConstEditor, i: int, name: str) -> int:
    return int(ed.attr(i, name, 0))


def _folds(ed: ConstEditor, t: str, axis: int) -> tuple[list[tuple[int, int, int]], str, str]:
    """(constants to divide by s, kind, producer name) for activation ``t`` with channels on ``axis``."""
    i = ed.producer.get(t)
    if i is None:
        raise _Skip(f"{t} is a graph input: no producer to fold 1/s into")
    n = ed.nodes[i]
    op, name = n.op_type, label(n, i)
    has = [k for k in range(len(n.input)) if n.input[k] and ed.const(n.input[k]) is not None]
    act = [k for k in range(len(n.input)) if n.input[k] and k not in has]
    bias_ok = 2 not in act  # Gemm's C / Conv's bias: absent or constant
    if op == "LayerNormalization" and axis == -1 and 1 in has and (len(n.input) < 3 or not n.input[2] or 2 in has):
        return [(i, k, -1) for k in (1, 2) if k in has], op, name
    if op == "Mul" and has and act:
        return [(i, has[0], axis)], op, name
    if op == "Add" and has and act:
        src = n.input[act[0]]
        if ed.sole_reader(src) != i:
            raise _Skip(f"{name} adds a constant to {src}, which is also read elsewhere")
        inner, kind, _ = _folds(ed, src, axis)
        return [*inner, (i, has[0], axis)], f"Add({kind})", name
    if op == "MatMul" and axis == -1 and has == [1] and act == [0] and ed.const(n.input[1]).ndim >= 2:
        return [(i, 1, -1)], op, name
    if op == "Gemm" and axis == -1 and 1 in has and 0 in act and bias_ok:
        return [(i, 1, -2 if _attr(ed, i, "transB") else -1)] + [(i, 2, -1)] * (2 in has), op, name
    if op == "Conv" and 1 in has and 0 in act and bias_ok and axis == 1 - ed.const(n.input[1]).ndim:
        return [(i, 1, -ed.const(n.input[1]).ndim)] + [(i, 2, -1)] * (2 in has), op, name
    if op == "Transpose" and ed.attr(i, "perm") is not None:
        perm = list(ed.attr(i, "perm"))
        if ed.sole_reader(n.input[0]) != i or -axis > len(perm):
            raise _Skip(f"{name}'s input is also read elsewhere (or the channel axis is not in its perm)")
        inner, kind, _ = _folds(ed, n.input[0], perm[axis + len(perm)] - len(perm))
        return inner, f"Transpose({kind})", name
    raise _Skip(f"produced by {op} {name}, which has no per-channel constant on the channel axis to fold 1/s into")


def _target(ed: ConstEditor, t: str) -> Target:
    if t in ed.inputs:
        raise _Skip("a graph input: no producer to fold 1/s into")
    if t in ed.pinned:
        raise _Skip("a graph output or read inside a subgraph")
    weights, axes, names, channels = [], set(), [], set()
    for i, k in ed.readers[t]:
        n = ed.nodes[i]
        if n.op_type in ("Shape", "Size"):
            continue
        w = ed.const(n.input[1]) if len(n.input) > 1 and n.op_type in ("MatMul", "Gemm") and k == 0 else None
        if w is None or w.ndim < 2:
            raise _Skip(
                f"also read by {n.op_type} {label(n, i)}, not as the input of a MatMul/Gemm with a constant weight"
            )
        if n.op_type == "MatMul":
            axes.add(-1)
            weights.append((i, 1, -2))
        else:
            axes.add(-2 if _attr(ed, i, "transA") else -1)
            weights.append((i, 1, -1 if _attr(ed, i, "transB") else -2))
        channels.add(w.shape[weights[-1][2]])
        names.append(label(n, i))
    if len(axes) != 1 or len(channels) != 1:
        raise _Skip("its consumers disagree on the channel axis or count (Gemm transA, weight shapes)")
    axis = axes.pop()
    folds, kind, producer = _folds(ed, t, axis)
    return Target(t, tuple(names), producer, kind, axis, channels.pop(), tuple(weights), tuple(folds))


def _scan(ed: ConstEditor) -> tuple[dict[str, Target], dict[str, str]]:
    found: dict[str, Target] = {}
    why: dict[str, str] = {}
    for n in ed.nodes:
        t = n.input[0] if n.op_type in ("MatMul", "Gemm") and len(n.input) > 1 else None
        if t and t not in found and t not in why and ed.const(n.input[1]) is not None and ed.const(t) is None:
            try:
                found[t] = _target(ed, t)
            except _Skip as exc:
                why[t] = str(exc)
    return found, why


def targets(model: onnx.ModelProto) -> dict[str, Target]:
    """The activations :func:`smooth` can rescale, by tensor name, in graph order."""
    return _scan(ConstEditor(model))[0]


def ineligible(model: onnx.ModelProto) -> dict[str, str]:
    """Activation inputs of MatMul/Gemm nodes with constant weights that are not targets: why."""
    return _scan(ConstEditor(model))[1]


def smoothing_scales(act_max: np.ndarray, weight_max: np.ndarray, alpha: float) -> np.ndarray:
    """s_j = act_max_j^alpha / weight_max_j^(1 - alpha), clamped to :data:`S_CLAMP`; 1 where act_max_j is 0."""
    a, w = np.asarray(act_max, np.float64), np.maximum(np.asarray(weight_max, np.float64), S_CLAMP[0])
    s = np.ones_like(a)
    ok = a > 0
    s[ok] = np.clip(a[ok] ** alpha / w[ok] ** (1 - alpha), *S_CLAMP)
    return s


def smoothed_max(act_max: np.ndarray, s: np.ndarray) -> np.ndarray:
    """The per-channel maxima of the smoothed activation X / s."""
    return np.asarray(act_max, np.float64) / np.asarray(s, np.float64)


def _weight_max(ed: ConstEditor, tgt: Target) -> np.ndarray:
    rows = []
    for i, k, ax in tgt.weights:
        w = np.abs(ed.const(ed.nodes[i].input[k]).astype(np.float64))
        rows.append(np.moveaxis(w, ax, -1).reshape(-1, tgt.channels).max(axis=0))
    return np.max(rows, axis=0)


def smooth(
    model: onnx.ModelProto, act_max: dict[str, np.ndarray], alpha: float = 0.5
) -> tuple[onnx.ModelProto, list[dict]]:
    """A new model with each tensor of ``act_max`` (a :func:`targets` key -> per-channel max |x|,
    e.g. :class:`ChannelMax` ``.value``) smoothed, and one record per tensor: ``tensor``,
    ``consumers``, ``producer``, ``kind``, ``alpha``, ``channels``, ``act_range_ratio_before`` /
    ``_after`` (:func:`range_ratio` of the activation maxima before and after), ``scale_min`` /
    ``scale_max``. Targets absent from ``act_max`` are left alone; a key that is not a target, a
    wrong channel count, non-finite maxima or alpha outside [0, 1] raise :class:`CalibkitError`."""
    if not 0.0 <= alpha <= 1.0:
        raise CalibkitError(f"smooth: alpha must be in [0, 1], got {alpha}")
    ed = ConstEditor(model)
    found, why = _scan(ed)
    for name in act_max:
        if name not in found:
            reason = why.get(name, "it is not the activation input of a MatMul/Gemm with a constant weight")
            raise CalibkitError(f"smooth: cannot smooth {name!r}: {reason}; pass only targets(model) tensors")
    records = []
    for name, tgt in found.items():
        if name not in act_max:
            continue
        amax = np.asarray(act_max[name], np.float64).reshape(-1)
        if amax.size != tgt.channels or not np.all(np.isfinite(amax)) or (amax < 0).any():
            raise CalibkitError(
                f"smooth: act_max[{name!r}] must hold {tgt.channels} finite maxima >= 0 (axis {tgt.axis}), got {amax.size} values"
            )
        s = smoothing_scales(amax, _weight_max(ed, tgt), alpha)
        for i, k, ax in tgt.weights:
            w = ed.const(ed.nodes[i].input[k])
            ed.write(i, k, w * along(s, ax), "smooth")
        for i, k, ax in tgt.folds:
            c = ed.const(ed.nodes[i].input[k])
            ed.write(i, k, c / along(s, ax), "smooth")
        records.append(
            {
                "tensor": name,
                "consumers": list(tgt.consumers),
                "producer": tgt.producer,
                "kind": tgt.kind,
                "alpha": float(alpha),
                "channels": tgt.channels,
                "act_range_ratio_before": range_ratio(amax),
                "act_range_ratio_after": range_ratio(smoothed_max(amax, s)),
                "scale_min": float(s.min()),
                "scale_max": float(s.max()),
            }
        )
    return ed.model, records
