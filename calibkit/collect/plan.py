"""What one collection runs, shared by the host and CUDA collectors: the exposed session, the
batch axis of every tensor, If guards, padding, and the reduction of one run on the host."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from calibkit.collect.runner import exposed_session, is_ort_error
from calibkit.data import DataSource, FeedStats
from calibkit.data.feed import Batch, _cut, _take
from calibkit.errors import CalibkitError
from calibkit.graph.batch_axes import activation_axes, axes_from_shapes
from calibkit.graph.model import InputSpec, calibration_tensors, with_outputs
from calibkit.graph.subgraphs import data_dependent_reasons, inline_constant_ifs, uncalibrated
from calibkit.numerics.histogram import TensorHistogram
from calibkit.qdq import fusion
from calibkit.sessions import ort_message, session

MEMORY_BUDGET = 64 << 20  # activation bytes per run when calibkit picks the batch size
MAX_AUTO_BATCH = 64
# Above this per run, no second buffer set (no overlap). The anchor bench's runs (16x96x96
# conv net, 327 tensors: 193 MB per sample) overlap: 30% faster end to end for +180 MB RSS.
OVERLAP_LIMIT = 256 << 20
CUDA_RUN_BATCH = 32


def auto_batch(bytes_per_sample: int, budget: int = MEMORY_BUDGET) -> int:
    """Run batch for a budget: a batch of exposed activations lives three times (ORT's arena and
    two bound buffer sets); larger runs buy little speed (bench/calibration.py)."""
    return max(1, min(MAX_AUTO_BATCH, budget // max(1, 3 * bytes_per_sample)))


@dataclass
class Collection:
    tensors: dict[str, TensorHistogram]
    stats: FeedStats
    seconds: float
    providers: list[str]
    uncalibrated: dict[str, str] = field(default_factory=dict)  # tensor -> why it has no histogram
    padded: bool = False
    skipped: dict[str, str] = field(default_factory=dict)  # tensor -> why --tensors left it out


@dataclass
class Plan:
    """What one collection runs: the (If-inlined) model's session and per-tensor facts."""

    sess: object
    specs: list[InputSpec]
    outputs: list[str]  # exposed tensors (activations, then guard conditions)
    input_names: list[str]
    axes: dict[str, int | None | str]  # batch axis per exposed tensor / input; "?" unknown
    guards: dict[str, bool]
    pad: bool
    model_name: str
    source: DataSource


def ort_run(fn, model_name: str, source: DataSource):
    try:
        return fn()
    except Exception as exc:
        if not is_ort_error(exc):
            raise
        raise CalibkitError(
            f"{model_name}: ONNX Runtime failed on a batch from {source.description}: {ort_message(exc)}"
        ) from None


def pad_batch(feed: Batch, size: int, specs: list[InputSpec]) -> Batch:
    """Zero-pad a short batch to ``size`` samples along each input's sample axis."""
    n = feed.samples
    if n >= size:
        return feed
    out = Batch()
    for s in specs:
        v = feed[s.name]
        if s.axis is None:
            out[s.name] = v
        else:
            shape = list(v.shape)
            shape[s.axis] = size - n
            out[s.name] = np.concatenate([v, np.zeros(shape, v.dtype)], axis=s.axis)
    out.samples = size
    return out


def _probe_axes(sess, outputs: list[str], first: Batch, specs: list[InputSpec]) -> list[int | None | str]:
    """Batch axes by running one sample and the same sample twice and comparing shapes."""
    one = _cut(first, specs, 0, 1)
    two = Batch(
        {s.name: one[s.name] if s.axis is None else np.concatenate([one[s.name]] * 2, axis=s.axis) for s in specs}
    )
    try:
        small = [np.shape(v) for v in sess.run(outputs, dict(one))]
        large = [np.shape(v) for v in sess.run(outputs, dict(two))]
    except Exception as exc:
        if not is_ort_error(exc):
            raise
        return ["?"] * len(outputs)  # e.g. a batch fixed by the model: no padding happens there
    return axes_from_shapes(small, large, 1, 2)


HOST_PROBE_WEIGHTS = 1 << 30  # weight bytes up to which the batch-axis probe runs on the host


def weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the model's initializers, from their declared dims (external data included)."""
    sizes = {
        onnx.TensorProto.FLOAT16: 2,
        onnx.TensorProto.BFLOAT16: 2,
        onnx.TensorProto.DOUBLE: 8,
        onnx.TensorProto.INT64: 8,
    }
    return sum(int(np.prod(t.dims, dtype=np.int64)) * sizes.get(t.data_type, 4) for t in model.graph.initializer)


def _host_probe_session(work: onnx.ModelProto, unknown: list[str], threads: int, model_name: str, external_dir):
    """A CPU session exposing only ``unknown``, for the batch-axis probe of a CUDA collection.

    On the GPU the probe's runs of one and two samples are new input shapes, and ONNX Runtime's
    CUDA provider searches convolution algorithms for every new shape (bench/gpu_split.py: 1.7 s
    of a 4 s detector calibration on an H100); shapes are the same on either provider. None when
    the weights are large (a second copy in host memory) or the host cannot build it."""
    if weight_bytes(work) > HOST_PROBE_WEIGHTS:
        return None
    try:
        return exposed_session(work, unknown, "cpu", threads, model_name, external_dir)
    except Exception as exc:
        if isinstance(exc, CalibkitError) or is_ort_error(exc):
            return None
        raise


def plan(
    model: onnx.ModelProto,
    specs: list[InputSpec],
    first: Batch,
    device: str,
    threads: int,
    model_name: str,
    source: DataSource,
    external_dir: str | None,
    pad: bool | None,
    rebatch: bool,
    tensors: str = "all",
    gpu_memory: int | None = None,
) -> tuple[Plan, list[str], dict[str, str], dict[str, str]]:
    """Inline constant Ifs, build the exposed session, find batch axes. Returns the plan, the
    calibration tensor names (graph order), {tensor: why not calibrated} and {tensor: why the
    ``tensors`` selection (calibkit/qdq/fusion.py) left it out}."""
    sampled = {s.name for s in specs if s.axis is not None}

    def evaluate(m: onnx.ModelProto, names: list[str]) -> dict[str, np.ndarray]:
        given = {n: np.asarray(first[n]) for n in names if n in first}  # an If condition that is a graph input
        names = [n for n in names if n not in given]
        if not names:
            return given
        sess = session(
            with_outputs(m, names, drop_shapes=True),
            device=device,
            threads=threads,
            where=model_name,
            external_dir=external_dir,
            gpu_mem_limit=gpu_memory,
        )
        return {**given, **dict(zip(names, ort_run(lambda: sess.run(names, dict(first)), model_name, source)))}

    work, guards, skipped = inline_constant_ifs(model, sampled, evaluate)
    names, dropped = fusion.select(work, calibration_tensors(work, everything=True), tensors)
    input_names = [s.name for s in specs]
    outputs = [n for n in names if n not in input_names]
    exposed = outputs + [g for g in guards if g not in outputs and g not in input_names]
    sess = exposed_session(work, exposed, device, threads, model_name, external_dir, gpu_memory)
    on_cuda = "CUDAExecutionProvider" in sess.get_providers()
    axes: dict[str, int | None | str] = {s.name: s.axis for s in specs}
    axes.update(activation_axes(work, specs, outputs))
    unknown = [n for n in outputs if n not in axes]
    if unknown and sampled:
        probe = _host_probe_session(work, unknown, threads, model_name, external_dir) if on_cuda else None
        found = _probe_axes(probe, unknown, first, specs) if probe is not None else None
        if found is None or all(a == "?" for a in found):  # the host could not run it (a CUDA-only op): ask the device
            found = _probe_axes(sess, unknown, first, specs)
        axes.update(zip(unknown, found))
    for n in unknown:
        axes.setdefault(n, "?")
    pad = on_cuda if pad is None else pad
    if pad and (not rebatch or not sampled or any(not isinstance(axes[n], int) for n in outputs)):
        pad = False  # a tensor without a batch axis would see the padding: run short batches unpadded
    calibrated = set(names)
    listed = {**uncalibrated(work, why=data_dependent_reasons(work, sampled)), **skipped}
    listed = {k: v for k, v in listed.items() if k not in calibrated}
    return Plan(sess, specs, exposed, input_names, axes, guards, pad, model_name, source), names, listed, dropped


def check_guards(p: Plan, values: dict[str, np.ndarray]) -> None:
    for name, expected in p.guards.items():
        v = values[name]
        got = bool(np.asarray(v).reshape(-1)[0]) if np.size(v) else False
        if got != expected:
            raise CalibkitError(
                f"{p.model_name}: the If condition {name!r} was {expected} on the first batch but is {got} on a later one; "
                "calibrate the data for each value of the inputs it depends on separately"
            )


def reduce_batch(
    p: Plan, hists: dict[str, TensorHistogram], non_float: set[str], values: list, feed: Batch, n: int, padded: bool
) -> None:
    """Reduce one run: each activation whole (padding removed along its batch axis); tensors
    without a batch axis count once per sample."""
    got = dict(zip(p.outputs, values))
    check_guards(p, {**{g: feed[g] for g in p.guards if g in p.input_names}, **got})
    for name in p.outputs:
        if name in p.guards and name not in hists:
            continue
        arr = got[name]
        if not isinstance(arr, np.ndarray) or arr.dtype.kind != "f":
            non_float.add(name)
            continue
        axis = p.axes.get(name, "?")
        if padded and isinstance(axis, int):
            arr = _take(arr, axis, 0, n)
        hists[name].update(arr, weight=n if axis is None else 1)
    for s in p.specs:
        if s.name in hists:
            hists[s.name].update(feed[s.name], weight=n if s.axis is None else 1)
