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

import onnx

from calibkit.collect.plan import (
    CUDA_RUN_BATCH,
    OVERLAP_LIMIT,
    Collection,
    Plan,
    auto_batch,
    ort_run,
    pad_batch,
    plan,
    reduce_batch,
)
from calibkit.collect.runner import ActivationRunner
from calibkit.data import DataSource, FeedStats, run_batches
from calibkit.data.options import FeedOptions
from calibkit.errors import CalibkitError
from calibkit.graph.model import InputSpec, input_specs
from calibkit.numerics import kernel as hist_kernel
from calibkit.numerics.histogram import TensorHistogram
from calibkit.sessions import providers_for


def collect(
    model: onnx.ModelProto,
    source: DataSource,
    run_batch: int | None = None,
    device: str = "auto",
    progress: Callable[[int], None] | None = None,
    model_name: str = "model",
    threads: int = 0,
    specs: list[InputSpec] | None = None,
    feed: FeedOptions | None = None,
    external_dir: str | None = None,
    pad: bool | None = None,
    hash_stream: bool = True,
    tensors: str = "all",
    gpu_memory: int | None = None,
) -> Collection:
    """Histograms of every calibration tensor over the whole ``source`` (or its first
    ``max_samples`` samples).

    CPU provider: per-sample results do not depend on the batch a sample runs in, so the run
    batch is sized to a memory budget and every cache is invariant to it (tested). CUDA
    provider: GPU kernels may round differently at different batch shapes, so every run is
    padded to exactly ``run_batch`` (default 32) samples; results are then invariant to
    sharding, order and chunking of the data (keep --batch-size fixed across shards).
    ``pad`` forces padding on or off (tests pad on the CPU provider). ``tensors``: ``all``
    (every float tensor), ``trt`` (not those inside TensorRT's fused layers) or ``qdq`` (the
    Q/DQ placement's inputs): calibkit/qdq/fusion.py; left-out tensors are listed with why.
    ``gpu_memory``: bytes of device memory the CUDA run may use (ORT's arena capped at it, a
    second buffer set only where it fits; see collect/cuda/driver.py); None: the default bound.
    """
    if run_batch is not None and run_batch < 1:
        raise CalibkitError(f"--batch-size must be >= 1, got {run_batch}")
    args = (model, source, run_batch, device, progress, model_name, threads, specs, feed, external_dir, pad)
    try:
        return _collect(*args, hash_stream, tensors, gpu_memory)
    except CalibkitError as exc:
        if gpu_memory is None or "--gpu-memory" in str(exc) or "alloc" not in str(exc).lower():
            raise
        raise CalibkitError(
            f"--gpu-memory {gpu_memory / 2**30:.2f} GiB is too little for this model at --batch-size "
            f"{run_batch or CUDA_RUN_BATCH} ({exc}); raise --gpu-memory, lower --batch-size (results change with it on "
            "the GPU) or use --tensors qdq"
        ) from None


def _collect(
    model,
    source,
    run_batch,
    device,
    progress,
    model_name,
    threads,
    specs,
    feed,
    external_dir,
    pad,
    hash_stream,
    tensors,
    gpu_memory,
) -> Collection:
    specs = specs or input_specs(model)
    # One core is the reducer's: ORT gets the rest (measured: 1.5x faster on 2 cores).
    threads = threads or max(1, (os.cpu_count() or 2) - 1)
    on_cuda = "CUDAExecutionProvider" in providers_for(device)
    padded_run = bool(pad) or (pad is None and on_cuda)
    size = {"n": run_batch or (CUDA_RUN_BATCH if padded_run else 1)}
    stats = FeedStats()
    start = time.perf_counter()
    batches = run_batches(source, specs, lambda: size["n"], stats, feed, hash_stream=hash_stream)
    first = next(batches, None)  # run_batches raises a CalibkitError when there is no sample
    if first is None:  # samples, but none the model can run: a fixed sample axis they do not fill
        fixed = ", ".join(f"{s.name} axis {s.axis} = {s.fixed_batch}" for s in specs if s.fixed_batch)
        raise CalibkitError(
            f"{source.description}: {stats.samples} sample(s) read but no batch the model can run"
            + (f" (it fixes the sample axis: {fixed})" if fixed else "")
            + "; give at least one full batch (--max-samples), or check --batch-axis"
        )
    p, names, listed, dropped = plan(
        model,
        specs,
        first,
        device,
        threads,
        model_name,
        source,
        external_dir,
        pad,
        FeedOptions.of(feed).rebatch,
        tensors,
        gpu_memory,
    )
    on_cuda = "CUDAExecutionProvider" in p.sess.get_providers()

    def stream():
        yield first
        yield from batches

    if on_cuda:
        from calibkit.collect.cuda import driver

        if driver.available():
            hists = driver.collect_device(p, stream(), stats, size["n"], progress, gpu_memory=gpu_memory)
        else:
            hists = _collect_host(p, stream(), stats, size, run_batch or size["n"], progress)
    else:
        with hist_kernel.deferred():  # numba only when the run is large enough to gain from it
            hists = _collect_host(p, stream(), stats, size, run_batch, progress)
    ordered = {n: hists[n] for n in names if n in hists}
    return Collection(ordered, stats, time.perf_counter() - start, list(p.sess.get_providers()), listed, p.pad, dropped)


# Activation bytes below which the NumPy reducer finishes before numba's import and LLVM would
# (about a second on a loaded 2-core machine): the demo never loads numba.
WARM_BYTES = 256 << 20


def worth_compiling(per_sample: int, source) -> bool:
    """Whether to load the compiled reducer: the whole run's activations (unknown length: yes)
    exceed WARM_BYTES. Either reducer gives the same counts."""
    total = source.num_samples() if hasattr(source, "num_samples") else None
    return total is None or per_sample * total > WARM_BYTES


def _collect_host(
    p: Plan, batches, stats: FeedStats, size: dict, run_batch: int | None, progress
) -> dict[str, TensorHistogram]:
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
            run_feed = pad_batch(feed, size["n"], p.specs) if padded else feed
            if runner.slots == 1 and pending is not None:
                pending.result()
            values = ort_run(lambda f=run_feed: runner.run(f), p.model_name, p.source)
            if stats.batches == 1 and not p.pad:
                per_sample = sum(getattr(v, "nbytes", 0) for v in values) // max(1, n)
                if worth_compiling(per_sample, p.source):
                    hist_kernel.warm()  # loads in a thread; NumPy reduces (same counts) meanwhile
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
