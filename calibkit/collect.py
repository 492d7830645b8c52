"""Stream data through the FP32 model and reduce every activation into its histogram.

The model is run by ONNX Runtime with every calibration tensor exposed as an output; each
batch's activations are reduced into per-tensor histograms at once and dropped, so memory
is one run batch of activations whatever the dataset size.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import onnx

from calibkit.data import DataSource, FeedStats, run_batches
from calibkit.errors import CalibkitError
from calibkit.histogram import TensorHistogram
from calibkit.onnx_model import calibration_tensors, input_specs, with_outputs
from calibkit.providers import ort_message, session

MEMORY_BUDGET = 64 << 20  # activation bytes per run when calibkit picks the batch size
MAX_AUTO_BATCH = 64
OVERLAP_LIMIT = 128 << 20  # above this per run, no second buffer set (no overlap)


def auto_batch(bytes_per_sample: int, budget: int = MEMORY_BUDGET) -> int:
    """Run batch for a budget: a batch of exposed activations lives three times (ORT's arena and
    two bound buffer sets); larger runs buy little speed (bench/calibration.py)."""
    return max(1, min(MAX_AUTO_BATCH, budget // max(1, 3 * bytes_per_sample)))


def _is_ort_error(exc: BaseException) -> bool:
    return type(exc).__module__.startswith("onnxruntime")


class ActivationRunner:
    """Runs the exposed-outputs model, writing activations into buffers it reuses.

    Exposing hundreds of intermediates makes ORT allocate (and the kernel zero) a batch worth
    of fresh pages on every run; binding the outputs to kept buffers makes later runs write in
    place. ``slots`` sets of buffers alternate, so one can be reduced while the next is filled;
    they are kept for one input signature only.
    """

    def __init__(self, sess, outputs: list[str], slots: int = 2) -> None:
        self.sess = sess
        self.outputs = outputs
        self.slots = slots
        self.signature = None
        self.sets: list[tuple[object, list[np.ndarray]]] = []
        self.turn = 0

    def _bind(self, buffers: list[np.ndarray]) -> tuple[object, list[np.ndarray]]:
        binding = self.sess.io_binding()
        for name, buf in zip(self.outputs, buffers):
            binding.bind_output(name, "cpu", 0, buf.dtype, buf.shape, buf.ctypes.data)
        return binding, buffers

    def set_slots(self, slots: int) -> None:
        """1: one buffer set (the caller reduces before the next run); 2: double buffering."""
        self.slots = slots
        self.sets = self.sets[:slots]
        self.turn = 1 % slots

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        sig = tuple((k, v.shape, v.dtype.str) for k, v in sorted(feed.items()))
        if sig != self.signature:
            values = self.sess.run(self.outputs, feed)
            self.signature = sig
            self.sets = [self._bind(values)]  # the fresh outputs become the first buffer set
            self.turn = 1 % self.slots
            return values
        if self.turn >= len(self.sets):
            self.sets.append(self._bind([np.empty_like(b) for b in self.sets[0][1]]))
        binding, buffers = self.sets[self.turn]
        self.turn = (self.turn + 1) % self.slots
        for k, v in feed.items():
            binding.bind_cpu_input(k, np.ascontiguousarray(v))
        self.sess.run_with_iobinding(binding)
        return buffers


@dataclass
class Collection:
    tensors: dict[str, TensorHistogram]
    stats: FeedStats
    seconds: float
    providers: list[str]


CUDA_RUN_BATCH = 32


def _ort_run(fn, model_name: str, source: DataSource):
    try:
        return fn()
    except Exception as exc:
        if not _is_ort_error(exc):
            raise
        raise CalibkitError(f"{model_name}: ONNX Runtime failed on a batch from {source.description}: {ort_message(exc)}") from None


def _pad(feed: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """Zero-pad a short batch to ``size`` samples (their outputs are dropped)."""
    n = len(next(iter(feed.values())))
    if n == size:
        return feed
    return {k: np.concatenate([v, np.zeros((size - n, *v.shape[1:]), v.dtype)]) for k, v in feed.items()}


def collect(
    model: onnx.ModelProto,
    source: DataSource,
    run_batch: int | None = None,
    device: str = "auto",
    progress: Callable[[int], None] | None = None,
    model_name: str = "model",
    threads: int = 0,
) -> Collection:
    """Histograms of every calibration tensor over the whole ``source``.

    CPU provider: per-sample results do not depend on the batch a sample runs in, so the run
    batch is sized to a memory budget and every cache is invariant to it (tested). CUDA
    provider: GPU kernels may round differently at different batch shapes, so every run is
    padded to exactly ``run_batch`` (default 32) samples; results are then invariant to
    sharding, order and chunking of the data (keep --batch-size fixed across shards).
    """
    if run_batch is not None and run_batch < 1:
        raise CalibkitError(f"--batch-size must be >= 1, got {run_batch}")
    specs = input_specs(model)
    names = calibration_tensors(model)
    input_names = {s.name for s in specs}
    outputs = [n for n in names if n not in input_names]
    # One core is the reducer's: ORT gets the rest (measured: 1.5x faster on 2 cores).
    threads = threads or max(1, (os.cpu_count() or 2) - 1)
    sess = session(with_outputs(model, outputs), device=device, threads=threads, where=model_name)
    on_cuda = "CUDAExecutionProvider" in sess.get_providers()
    stats = FeedStats()
    start = time.perf_counter()
    if on_cuda:
        from calibkit import gpu_reduce

        size = run_batch or CUDA_RUN_BATCH
        loop = _collect_device if gpu_reduce.available() else _collect_host
        hists = loop(sess, source, specs, outputs, input_names, stats, size, True, progress, model_name)
    else:
        hists = _collect_host(sess, source, specs, outputs, input_names, stats, run_batch, False, progress, model_name)
    ordered = {n: hists[n] for n in names if n in hists}
    return Collection(ordered, stats, time.perf_counter() - start, list(sess.get_providers()))


def _collect_host(sess, source, specs, outputs, input_names, stats, run_batch, pad, progress, model_name) -> dict[str, TensorHistogram]:
    hists = {n: TensorHistogram() for n in [*input_names, *outputs]}
    non_float: set[str] = set()
    runner = ActivationRunner(sess, outputs, slots=2)

    def reduce(values: list[np.ndarray], feed: dict[str, np.ndarray], n: int) -> None:
        for name, arr in zip(outputs, values):
            if arr.dtype.kind != "f":
                non_float.add(name)
                continue
            hists[name].update(arr[:n])
        for name in input_names:
            hists[name].update(feed[name])

    # Fixed --batch-size, or: one sample first, then as many as the memory budget allows.
    size = {"n": run_batch or 1}
    # ORT fills one buffer set while a second thread reduces the other (both release the GIL
    # for most of their work); at most one reduction is in flight, so a set is never reused
    # before its reduction is done.
    # A run's activations above OVERLAP_LIMIT get one buffer set: reduce, then run again.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="calibkit-reduce") as pool:
        pending = None
        for feed in run_batches(source, specs, lambda: size["n"], stats):
            n = len(next(iter(feed.values())))
            run_feed = _pad(feed, size["n"]) if pad else feed
            if runner.slots == 1 and pending is not None:
                pending.result()
            values = _ort_run(lambda f=run_feed: runner.run(f), model_name, source)
            if stats.batches == 1:
                per_sample = sum(v.nbytes for v in values) // max(1, n)
                if run_batch is None:
                    size["n"] = auto_batch(per_sample)
                if per_sample * size["n"] > OVERLAP_LIMIT:
                    runner.set_slots(1)
            stats.run_batch = size["n"]
            if pending is not None:
                pending.result()
            pending = pool.submit(reduce, values, feed, n)
            if progress:
                progress(stats.samples)
        if pending is not None:
            pending.result()
    for name in non_float:
        del hists[name]
    return hists


def _collect_device(sess, source, specs, outputs, input_names, stats, run_batch, pad, progress, model_name) -> dict[str, TensorHistogram]:
    """CUDA provider + CuPy: activations stay in device memory and are reduced there."""
    from calibkit.gpu_reduce import DeviceHistograms, ortvalue_to_cupy

    device_hists = DeviceHistograms(outputs)
    host_hists = {n: TensorHistogram() for n in input_names}
    binding = sess.io_binding()
    non_float: set[str] = set()
    stats.run_batch = run_batch
    for feed in run_batches(source, specs, run_batch, stats):
        n = len(next(iter(feed.values())))
        for k, v in (_pad(feed, run_batch) if pad else feed).items():
            binding.bind_cpu_input(k, np.ascontiguousarray(v))
        for name in outputs:
            binding.bind_output(name, "cuda", 0)

        def run() -> None:
            sess.run_with_iobinding(binding)
            binding.synchronize_outputs()

        _ort_run(run, model_name, source)
        arrays = {}
        for name, value in zip(outputs, binding.get_outputs()):
            arr = ortvalue_to_cupy(value)
            if arr is None:
                non_float.add(name)
            else:
                arrays[name] = arr[:n]
        device_hists.update(arrays)
        for name in input_names:
            host_hists[name].update(feed[name])
        if progress:
            progress(stats.samples)
    hists = {**host_hists, **device_hists.to_host()}
    for name in non_float:
        del hists[name]
    return hists
