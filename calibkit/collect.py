"""Stream data through the FP32 model and reduce every activation into its histogram.

The model is run by ONNX Runtime with every calibration tensor exposed as an output; each
batch's activations are reduced into per-tensor histograms at once and dropped, so memory
is one run batch of activations whatever the dataset size.

Every activation is reduced whole (no slicing on axis 0: a Transpose output ``[3, N, ...]``
or a 0-d ReduceMax holds no padding on the CPU provider). A tensor without a batch axis (a
scalar, a reduction over the batch) is computed once per run for all its samples, so its
values count once per sample (``weight``): constant ones then give the same histogram for any
batch size. When runs are padded (CUDA), padding is removed along each tensor's own batch axis
(``batch_axes.py``); models with a tensor that has none are not padded (the short last batch
runs at its own size).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import onnx

from calibkit import hist_kernel
from calibkit.batch_axes import activation_axes, axes_from_shapes
from calibkit.data import DataSource, FeedStats, run_batches
from calibkit.data.feed import Batch, _cut, _take
from calibkit.errors import CalibkitError
from calibkit.histogram import TensorHistogram
from calibkit.onnx_model import InputSpec, calibration_tensors, input_specs, with_outputs
from calibkit.providers import ort_message, providers_for, session
from calibkit.runner import ActivationRunner, exposed_session, is_ort_error
from calibkit.subgraphs import data_dependent_reasons, inline_constant_ifs, uncalibrated

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


def _ort_run(fn, model_name: str, source: DataSource):
    try:
        return fn()
    except Exception as exc:
        if not is_ort_error(exc):
            raise
        raise CalibkitError(f"{model_name}: ONNX Runtime failed on a batch from {source.description}: {ort_message(exc)}") from None


def _pad(feed: Batch, size: int, specs: list[InputSpec]) -> Batch:
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
    two = Batch({s.name: one[s.name] if s.axis is None else np.concatenate([one[s.name]] * 2, axis=s.axis) for s in specs})
    try:
        small = [np.shape(v) for v in sess.run(outputs, dict(one))]
        large = [np.shape(v) for v in sess.run(outputs, dict(two))]
    except Exception as exc:
        if not is_ort_error(exc):
            raise
        return ["?"] * len(outputs)  # e.g. a batch fixed by the model: no padding happens there
    return axes_from_shapes(small, large, 1, 2)


def plan(model: onnx.ModelProto, specs: list[InputSpec], first: Batch, device: str, threads: int, model_name: str, source: DataSource,
         external_dir: str | None, pad: bool | None, rebatch: bool) -> tuple[Plan, list[str], dict[str, str]]:
    """Inline constant Ifs, build the exposed session, find batch axes. Returns the plan, the
    calibration tensor names (graph order) and {tensor: why not calibrated}."""
    sampled = {s.name for s in specs if s.axis is not None}

    def evaluate(m: onnx.ModelProto, names: list[str]) -> dict[str, np.ndarray]:
        sess = session(with_outputs(m, names, drop_shapes=True), device=device, threads=threads, where=model_name, external_dir=external_dir)
        return dict(zip(names, _ort_run(lambda: sess.run(names, dict(first)), model_name, source)))

    work, guards, skipped = inline_constant_ifs(model, sampled, evaluate)
    names = calibration_tensors(work, everything=True)
    input_names = [s.name for s in specs]
    outputs = [n for n in names if n not in input_names]
    exposed = outputs + [g for g in guards if g not in outputs and g not in input_names]
    sess = exposed_session(work, exposed, device, threads, model_name, external_dir)
    on_cuda = "CUDAExecutionProvider" in sess.get_providers()
    axes: dict[str, int | None | str] = {s.name: s.axis for s in specs}
    axes.update(activation_axes(work, specs, outputs))
    unknown = [n for n in outputs if n not in axes]
    if unknown and sampled:
        axes.update(zip(unknown, _probe_axes(sess, unknown, first, specs)))
    for n in unknown:
        axes.setdefault(n, "?")
    pad = on_cuda if pad is None else pad
    if pad and (not rebatch or not sampled or any(not isinstance(axes[n], int) for n in outputs)):
        pad = False  # a tensor without a batch axis would see the padding: run short batches unpadded
    calibrated = set(names)
    listed = {**uncalibrated(work, why=data_dependent_reasons(work, sampled)), **skipped}
    listed = {k: v for k, v in listed.items() if k not in calibrated}
    return Plan(sess, specs, exposed, input_names, axes, guards, pad, model_name, source), names, listed


def collect(
    model: onnx.ModelProto,
    source: DataSource,
    run_batch: int | None = None,
    device: str = "auto",
    progress: Callable[[int], None] | None = None,
    model_name: str = "model",
    threads: int = 0,
    specs: list[InputSpec] | None = None,
    rebatch: bool = True,
    max_samples: int | None = None,
    external_dir: str | None = None,
    pad: bool | None = None,
    hash_stream: bool = True,
) -> Collection:
    """Histograms of every calibration tensor over the whole ``source`` (or its first
    ``max_samples`` samples).

    CPU provider: per-sample results do not depend on the batch a sample runs in, so the run
    batch is sized to a memory budget and every cache is invariant to it (tested). CUDA
    provider: GPU kernels may round differently at different batch shapes, so every run is
    padded to exactly ``run_batch`` (default 32) samples; results are then invariant to
    sharding, order and chunking of the data (keep --batch-size fixed across shards).
    ``pad`` forces padding on or off (tests pad on the CPU provider).
    """
    if run_batch is not None and run_batch < 1:
        raise CalibkitError(f"--batch-size must be >= 1, got {run_batch}")
    specs = specs or input_specs(model)
    # One core is the reducer's: ORT gets the rest (measured: 1.5x faster on 2 cores).
    threads = threads or max(1, (os.cpu_count() or 2) - 1)
    on_cuda = "CUDAExecutionProvider" in providers_for(device)
    if not on_cuda:
        hist_kernel.warm()  # the compiled reducer loads while the model is prepared
    padded_run = bool(pad) or (pad is None and on_cuda)
    size = {"n": run_batch or (CUDA_RUN_BATCH if padded_run else 1)}
    stats = FeedStats()
    start = time.perf_counter()
    batches = run_batches(source, specs, lambda: size["n"], stats, rebatch=rebatch, max_samples=max_samples, hash_stream=hash_stream)
    first = next(batches)  # run_batches raises a CalibkitError when there is no sample
    p, names, listed = plan(model, specs, first, device, threads, model_name, source, external_dir, pad, rebatch)
    on_cuda = "CUDAExecutionProvider" in p.sess.get_providers()

    def stream():
        yield first
        yield from batches

    if on_cuda:
        from calibkit import gpu_reduce

        if gpu_reduce.available():
            from calibkit.collect_device import collect_device

            hists = collect_device(p, stream(), stats, size["n"], progress)
        else:
            hists = _collect_host(p, stream(), stats, size, run_batch or size["n"], progress)
    else:
        hists = _collect_host(p, stream(), stats, size, run_batch, progress)
    ordered = {n: hists[n] for n in names if n in hists}
    return Collection(ordered, stats, time.perf_counter() - start, list(p.sess.get_providers()), listed, p.pad)


def check_guards(p: Plan, values: dict[str, np.ndarray]) -> None:
    for name, expected in p.guards.items():
        v = values[name]
        got = bool(np.asarray(v).reshape(-1)[0]) if np.size(v) else False
        if got != expected:
            raise CalibkitError(
                f"{p.model_name}: the If condition {name!r} was {expected} on the first batch but is {got} on a later one; "
                "calibrate the data for each value of the inputs it depends on separately"
            )


def reduce_batch(p: Plan, hists: dict[str, TensorHistogram], non_float: set[str], values: list, feed: Batch, n: int, padded: bool) -> None:
    """Reduce one run: each activation whole (padding removed along its batch axis); tensors
    without a batch axis count once per sample."""
    got = dict(zip(p.outputs, values))
    check_guards(p, got)
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


def _collect_host(p: Plan, batches, stats: FeedStats, size: dict, run_batch: int | None, progress) -> dict[str, TensorHistogram]:
    float_inputs = [s.name for s in p.specs if s.dtype.kind == "f"]
    hists = {n: TensorHistogram() for n in [*float_inputs, *(o for o in p.outputs if o not in p.guards)]}
    non_float: set[str] = set()
    runner = ActivationRunner(p.sess, p.outputs, slots=2)
    # Fixed --batch-size, or: one sample first, then as many as the memory budget allows.
    # ORT fills one buffer set while a second thread reduces the other (both release the GIL
    # for most of their work); at most one reduction is in flight, so a set is never reused
    # before its reduction is done.
    # A run's activations above OVERLAP_LIMIT get one buffer set: reduce, then run again.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="calibkit-reduce") as pool:
        pending = None
        for feed in batches:
            n = feed.samples
            padded = p.pad and n < size["n"]
            run_feed = _pad(feed, size["n"], p.specs) if padded else feed
            if runner.slots == 1 and pending is not None:
                pending.result()
            values = _ort_run(lambda f=run_feed: runner.run(f), p.model_name, p.source)
            if stats.batches == 1 and not p.pad:
                per_sample = sum(getattr(v, "nbytes", 0) for v in values) // max(1, n)
                if run_batch is None:
                    size["n"] = auto_batch(per_sample)
                if per_sample * size["n"] > OVERLAP_LIMIT:
                    runner.set_slots(1)
            stats.run_batch = size["n"]
            if pending is not None:
                pending.result()
            pending = pool.submit(reduce_batch, p, hists, non_float, values, feed, n, padded)
            if progress:
                progress(stats.samples)
        if pending is not None:
            pending.result()
    for name in non_float:
        hists.pop(name, None)
    return hists
