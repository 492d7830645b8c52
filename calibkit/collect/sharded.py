"""``--devices 0,1``: the data cut into contiguous shards, one process per GPU, merged exactly.

Shards start at multiples of the run batch, so every GPU runs exactly the batches the one-GPU
run would (the same padding, the same shapes), and histograms merge exactly: the result is
the one-GPU result. Workers are plain local processes (``spawn``), one per GPU, each seeing
only its GPU (``CUDA_VISIBLE_DEVICES``); nothing CUDA is imported here before that is set.
With ``--ray`` they are Ray actors of one GPU each (calibkit.executor; Ray sets each actor's
CUDA_VISIBLE_DEVICES): a local cluster started for the run hands out the listed GPUs only; on
a running cluster the list only says how many shards there are.
"""

from __future__ import annotations

import copy
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

from calibkit.errors import CalibkitError
from calibkit.executor.orphans import init_worker, spawning

# Below this many samples one GPU finishes first: every GPU's worker process pays its own start-up
# (imports, ONNX Runtime session, CUDA context). From bench/gpu_multi.h200x2.log (two H200s, the
# PP-OCRv4 detector, 3x640x640, --batch-size 8): at 256 images --devices all took 4.44 s end to end
# against 3.63 s on one GPU; one GPU's cost per image in the same log is (3.69 - 1.25 s) / (1024 - 64)
# = 2.54 ms, so two GPUs carry 0.81 + 128 x 2.54 ms = 1.14 s more start-up and win back 1.27 ms an
# image: from about 893 images. A break-even derived from that log, not a measured crossover
# (bench/gpu_ray.py measures one); inputs cheaper than 640x640 need more samples.
MULTI_GPU_BREAK_EVEN = 900


def few_samples_warning(gpus: int, samples: int | None) -> str | None:
    """The start-up warning for ``gpus`` GPUs on ``samples`` samples (None: no warning)."""
    if gpus < 2 or samples is None or samples >= MULTI_GPU_BREAK_EVEN:
        return None
    return (
        f"--devices: {samples} samples over {gpus} GPUs; below about {MULTI_GPU_BREAK_EVEN} samples one GPU "
        "is faster (each GPU's worker pays its own start-up; measured on two H200s with 640x640 images), "
        "so --devices 0 will likely finish first"
    )


def parse_devices(text: str | None, visible: int, check_visible: bool = True) -> list[int] | None:
    """``"0,1"`` / ``"all"`` -> GPU indices (None: not given); ``check_visible=False`` (a Ray
    cluster's GPUs): indices are checked for form only."""
    if text is None:
        return None
    if text.strip() == "all":
        if visible == 0:
            raise CalibkitError("--devices all: no CUDA device is visible")
        return list(range(visible))
    try:
        ids = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise CalibkitError(f"--devices {text!r}: expected GPU indices like 0,1 or 'all'") from None
    bad = [i for i in ids if i < 0 or (check_visible and i >= visible)]
    if not ids:
        raise CalibkitError(f"--devices {text!r} names no GPU; give indices like 0,1 or 'all', or leave --devices out")
    if check_visible and visible == 0:
        raise CalibkitError(f"--devices {text!r}: no CUDA device is visible; leave --devices out to run on the CPU")
    if bad or len(set(ids)) != len(ids):
        raise CalibkitError(
            f"--devices {text!r}: {visible} CUDA device(s) visible; give distinct indices in 0..{visible - 1} or 'all'"
        )
    return ids


def shard_ranges(total: int, run_batch: int, shards: int) -> list[tuple[int, int]]:
    """Contiguous sample ranges starting at multiples of ``run_batch`` (empty ones dropped)."""
    runs = math.ceil(total / run_batch)
    per = math.ceil(runs / shards)
    out = []
    for i in range(shards):
        start, stop = i * per * run_batch, min(total, (i + 1) * per * run_batch)
        if start < stop:
            out.append((start, stop))
    return out


class SliceSource:
    """Samples ``[start, stop)`` of a source (generic: reads and drops what comes before)."""

    def __init__(self, source, specs, start: int, stop: int) -> None:
        self.source, self.specs, self.start, self.stop = source, specs, start, stop
        self.description = f"{source.description} [{start}:{stop}]"

    def fingerprint(self) -> str | None:
        return None

    def num_samples(self) -> int | None:
        return self.stop - self.start

    def batches(self):
        from calibkit.data.feed import _cut, check_feed

        seen = 0
        for raw in self.source.batches():
            feed = check_feed(raw, self.specs, self.source.description)
            n = feed.samples
            lo, hi = max(self.start - seen, 0), min(self.stop - seen, n)
            seen += n
            if lo < hi:
                yield dict(_cut(feed, self.specs, lo, hi)) if (lo, hi) != (0, n) else dict(feed)
            if seen >= self.stop:
                return


def shard(source, specs, start: int, stop: int):
    """A source over samples ``[start, stop)``: file lists and arrays are cut, others streamed."""
    from calibkit.data.arrays import NpySource
    from calibkit.data.images import ImageFolderSource

    if isinstance(source, ImageFolderSource):
        out = copy.copy(source)
        out.files = source.files[start:stop]
        return out
    if isinstance(source, NpySource):
        out = copy.copy(source)
        out._array = source._array[start:stop]
        return out
    return SliceSource(source, specs, start, stop)


def _use_gpu(index: int) -> None:
    os.environ["CUDA_VISIBLE_DEVICES"] = str(index)


def _collect_shard(
    model: str,
    data,
    pre,
    feed,
    run_batch: int,
    start: int,
    stop: int,
    workers: int,
    tensors: str = "all",
    gpu_memory: int | None = None,
):
    """In a worker: collect samples ``[start, stop)`` on its one visible GPU."""
    from calibkit.collect.host import collect
    from calibkit.data import open_source
    from calibkit.data.options import FeedOptions
    from calibkit.graph.model import has_external, input_specs, load

    proto = load(model, keep_external=True)
    specs = input_specs(proto, feed.batch_axes)
    source = open_source(data, specs, pre)
    if workers and hasattr(source, "workers"):
        source.workers = workers
    col = collect(
        proto,
        shard(source, specs, start, stop),
        run_batch,
        device="cuda",
        model_name=os.path.basename(model),
        specs=specs,
        feed=FeedOptions(feed.batch_axes, feed.rebatch),
        external_dir=os.path.dirname(os.path.abspath(model)) if has_external(proto) else None,
        hash_stream=False,
        tensors=tensors,
        gpu_memory=gpu_memory,
    )
    col.stats.digest = None  # not picklable; file sources need no streamed hash
    return col


def _shard_task(args: tuple):
    """Executor task (a Ray actor of one GPU): one shard's collection."""
    return _collect_shard(*args)


def _on_ray(ray: str, devices: list[int], jobs: list[tuple]) -> list:
    from calibkit import executor
    from calibkit.sessions import cuda_device_count

    flag = f"--devices {','.join(map(str, devices))} --ray {ray}"
    local = ray == "auto" and not os.environ.get("RAY_ADDRESS")
    if local:
        visible = cuda_device_count()
        if visible == 0 or max(devices) >= visible:
            raise CalibkitError(
                f"{flag}: --ray auto starts a Ray cluster on this machine, which has {visible} CUDA device(s) visible; "
                "list visible GPUs, or give --ray the HOST:PORT of a cluster with GPUs"
            )
    try:
        with executor.make(
            workers=len(jobs), ray=ray, gpus=1, visible_gpus=",".join(map(str, devices)) if local else None
        ) as ex:
            return ex.run(_shard_task, jobs)
    except CalibkitError as exc:
        raise CalibkitError(f"{flag}: {exc}") from None


def collect_sharded(
    model: str,
    data,
    pre,
    source,
    feed,
    run_batch: int | None,
    devices: list[int],
    workers: int = 0,
    ray: str | None = None,
    selection: str = "all",
    gpu_memory: int | None = None,
):
    """One process per GPU over contiguous shards (Ray actors with ``ray``); their collections
    merged (exact)."""
    from calibkit.collect.plan import CUDA_RUN_BATCH, Collection
    from calibkit.data import FeedStats

    if not isinstance(data, (str, os.PathLike)) or not getattr(source, "hashes_files", False):
        raise CalibkitError(
            "--devices needs data in files (a folder of images, .npz or .npy): a loader script cannot be split across processes"
        )
    total = source.num_samples()
    if total is None:
        raise CalibkitError(f"--devices: the number of samples in {source.description} is unknown; use one device")
    limited = feed.max_samples is not None and feed.max_samples < total
    total = min(total, feed.max_samples or total)
    run_batch = run_batch or CUDA_RUN_BATCH
    ranges = shard_ranges(total, run_batch, len(devices))
    t0 = time.perf_counter()
    jobs = [(str(model), str(data), pre, feed, run_batch, a, b, workers, selection, gpu_memory) for a, b in ranges]
    if ray is not None:
        parts = _on_ray(ray, devices, jobs)
    else:
        ctx = get_context("spawn")
        pools = [
            ProcessPoolExecutor(
                max_workers=1, mp_context=ctx, initializer=init_worker, initargs=(os.getpid(), _use_gpu, d)
            )
            for d in devices[: len(ranges)]
        ]
        try:
            with spawning():
                futures = [pool.submit(_collect_shard, *job) for pool, job in zip(pools, jobs)]
            parts = [f.result() for f in futures]
        finally:
            for pool in pools:
                pool.shutdown(cancel_futures=True)
    tensors = parts[0].tensors
    for part in parts[1:]:
        if list(part.tensors) != list(tensors):
            raise CalibkitError(
                f"--devices: the shards saw different tensors ({len(tensors)} vs {len(part.tensors)}); calibrate on one device"
            )
        for name, h in part.tensors.items():
            tensors[name].merge(h)
    stats = FeedStats(
        samples=sum(p.stats.samples for p in parts),
        batches=sum(p.stats.batches for p in parts),
        dropped=sum(p.stats.dropped for p in parts),
        run_batch=run_batch,
        limited=limited,
    )
    uncal = {k: v for p in parts for k, v in p.uncalibrated.items()}
    return Collection(
        tensors,
        stats,
        time.perf_counter() - t0,
        parts[0].providers,
        uncal,
        any(p.padded for p in parts),
        parts[0].skipped,
    )
