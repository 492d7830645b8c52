"""The recovery steps on a float model: thresholds by the consumer's error, and weights
(adaptive rounding, bias correction) in topological order."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

import calibkit.recovery.gather as gather
import calibkit.recovery.rounding as rounding
import calibkit.recovery.thresholds as thresholds
from calibkit.artifacts.histograms import HistogramSet
from calibkit.errors import CalibkitError
from calibkit.methods import auto
from calibkit.numerics.formats import usable_amax
from calibkit.recovery.edit import Editor
from calibkit.recovery.layers import Layer, find, weight_from_matrix
from calibkit.recovery.stats import mean_shift

ROUNDINGS = ("nearest", "adaptive")
THRESHOLDS = ("consumer", "auto", "method")
BIAS_TERMS = ("full", "weights")


@dataclass(frozen=True)
class RecoveryOptions:
    """``thresholds``: consumer (the consumer's error), auto (the tensor's own MSE) or method
    (the calibration table's as it is); ``bias_correction``; ``rounding``: nearest|adaptive;
    ``rows_budget``: multiply-adds per layer and batch for the K x K statistics.

    ``bias_terms``: what the corrected bias removes: ``full`` the whole mean shift of the output
    (weight rounding, the input's clipping and every upstream error: Nagel et al.'s empirical
    correction) or ``weights`` only weight rounding's, ``(W - V) E[x~]``. Where a few tokens'
    clipped outliers make the mean (MiniLM: shifts of 3-5 on FFN inputs), ``full`` moves their
    error onto every other token (search cosine 0.957 -> 0.825) and ``weights`` does not."""

    thresholds: str = "consumer"
    bias_correction: bool = True
    rounding: str = "adaptive"
    iterations: int = 1000
    rows_budget: float = 2e8
    seed: int = 0
    gpu: str = "auto"  # adaptive rounding on the GPU (CuPy) when usable: auto | cpu
    bias_terms: str = "full"

    def __post_init__(self) -> None:
        if self.bias_terms not in BIAS_TERMS:
            raise CalibkitError(f"bias terms {self.bias_terms!r} must be one of {', '.join(BIAS_TERMS)}")
        if self.rounding not in ROUNDINGS:
            raise CalibkitError(f"--rounding {self.rounding!r} must be one of {', '.join(ROUNDINGS)}")
        if self.thresholds not in THRESHOLDS:
            raise CalibkitError(f"--thresholds {self.thresholds!r} must be one of {', '.join(THRESHOLDS)}")

    @property
    def changes_weights(self) -> bool:
        return self.bias_correction or self.rounding != "nearest"


def choose_thresholds(
    model: onnx.ModelProto,
    hset: HistogramSet,
    amax: dict[str, float],
    feeds: list[dict[str, np.ndarray]],
    opts: RecoveryOptions,
    device: str = "cpu",
) -> tuple[dict[str, float], dict[str, dict]]:
    """{tensor: amax} and {tensor: what was chosen and why} for every tensor of ``amax``."""
    if opts.thresholds == "method":
        return dict(amax), {}
    out, why = dict(amax), {}
    for name, h in hset.tensors.items():
        if name in amax and opts.thresholds in ("auto", "consumer"):
            a, detail = auto.choose(h, auto.AutoConfig())
            a = usable_amax(a)  # an all-zero tensor gets the table's degenerate amax, never 0
            out[name] = a
            why[name] = {"amax": a, "by": "auto", "method": detail["method"]}
    if opts.thresholds == "auto":
        return out, why
    layers, _ = find(model, amax)
    inits = {i.name: i for i in model.graph.initializer}
    consumers: dict[str, list[Layer]] = {}
    for layer in layers:
        if layer.input in hset.tensors:
            consumers.setdefault(layer.input, []).append(layer)
    hists: dict[str, thresholds.ChannelHistogram] = {}
    for got in gather.tensors(model, list(consumers), feeds, device):
        for name, users in consumers.items():
            x = got[name]
            axis = 1 if users[0].op in ("Conv", "ConvTranspose", "Gemm") else x.ndim - 1
            if name not in hists:
                hists[name] = thresholds.ChannelHistogram(x.shape[axis], hset.tensors[name].amax)
            hists[name].update(x, axis)
    for name, users in consumers.items():
        h = hists[name]
        energies = []
        for layer in users:
            e = thresholds.channel_energy(
                layer.op, onnx.numpy_helper.to_array(inits[layer.weight]), layer.groups, layer.trans_b
            )
            if e.shape == (h.channels,):
                energies.append(e)
        if not energies:
            continue
        c = thresholds.choose(hset.tensors[name], h, energies)
        out[name] = c.amax
        why[name] = {
            "amax": c.amax,
            "by": "consumer_error",
            "method": c.method,
            "error": c.error,
            "error_auto": c.error_auto,
            "consumers": len(energies),
        }
    return out, why


def with_matmul_biases(model: onnx.ModelProto, amax: dict[str, float]) -> onnx.ModelProto:
    """``model`` with a zero bias ``Add`` after every recoverable MatMul that has none, so bias
    correction has a slot (TensorRT fuses MatMul + bias Add into one layer). The Add takes over
    the MatMul's output name, so consumers, graph outputs and scales keep theirs. Returns
    ``model`` itself when no MatMul needs one."""
    layers, _ = find(model, amax)
    bare = {layer.node for layer in layers if layer.op == "MatMul" and layer.bias is None}
    if not bare:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    inits = {i.name: i for i in g.initializer}
    taken = {t for n in g.node for t in (*n.input, *n.output)} | set(inits)
    nodes = []
    for node in g.node:
        nodes.append(node)
        if node.name not in bare:
            continue
        n_out = int(inits[node.input[1]].dims[-1])
        y = node.output[0]
        pre, bias = f"{y}.calibkit_no_bias", f"{node.name}.calibkit_bias"
        if pre in taken or bias in taken:
            continue  # a name clash: leave this layer without a slot
        node.output[0] = pre
        g.initializer.append(numpy_helper.from_array(np.zeros(n_out, np.float32), bias))
        nodes.append(helper.make_node("Add", [pre, bias], [y], name=f"{node.name}.calibkit_bias_add"))
    del g.node[:]
    g.node.extend(nodes)
    return out


def recover_weights(
    model: onnx.ModelProto,
    amax: dict[str, float],
    feeds: list[dict[str, np.ndarray]],
    opts: RecoveryOptions,
    device: str = "cpu",
    progress=None,
) -> tuple[onnx.ModelProto, dict]:
    """A copy of ``model`` (prepared and named: qdq.export.name_nodes) with rounded weights and
    corrected biases, and the record of what each layer got.

    Layers are taken in topological order, each against the input it gets from the INT8 model
    whose earlier layers already carry their rounding and correction (Nagel et al.'s "full"
    order: no correction counted twice). One Q/DQ session serves every step: the recovered
    layers' weights and biases are its inputs (sequential.py)."""
    from calibkit.recovery.sequential import Stepper

    if opts.bias_correction:
        model = with_matmul_biases(model, amax)
    layers, skipped = find(model, amax)
    inits = {i.name: i for i in model.graph.initializer}
    float_layers = [layer for layer in layers if onnx.numpy_helper.to_array(inits[layer.weight]).dtype == np.float32]
    for layer in layers:
        if layer not in float_layers:
            skipped[layer.node] = "weights are not float32"
    doc: dict = {"layers": {}, "skipped": skipped}
    if not opts.changes_weights or not float_layers:
        return model, doc
    out = onnx.ModelProto()
    out.CopyFrom(model)
    ed = Editor(out)
    xp = rounding.array_module(opts.gpu)
    doc["rounding_on"] = "cupy" if xp is not np else "numpy"
    with Stepper(model, amax, float_layers, feeds, opts, device) as st:
        for i, layer in enumerate(float_layers):
            m = st.moments(i)
            w = st.weights[i]
            r = rounding.adaround(m, w, iterations=opts.iterations if opts.rounding == "adaptive" else 0, xp=xp)
            s = rounding.channel_scales(w)
            v = rounding.dequantize(r.q, s)
            rec = {
                "op": layer.op,
                "rounding": "nearest" if r.kept_nearest else "adaptive",
                "error_nearest": r.error_nearest,
                "error": r.error,
                "changed": float(np.mean(r.q != rounding.nearest(w, s))),
            }
            shift = None
            if opts.bias_correction:
                shift = mean_shift(m, w.astype(np.float64), v.astype(np.float64), opts.bias_terms).reshape(-1)
                rec["bias_shift_max"] = float(np.abs(shift).max()) if shift.size else 0.0
            st.set(i, v, shift)
            ed.set_weight(layer, weight_from_matrix(layer, v, st.shapes[i]))
            if shift is not None:
                rec["bias"] = "corrected" if ed.add_bias(layer, shift) else "no bias slot (MatMul without its Add)"
            doc["layers"][layer.node] = rec
            if progress is not None:
                progress(i + 1, len(float_layers))
    return out, doc
