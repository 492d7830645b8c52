"""CUDA provider + CuPy: activations stay in device memory and are reduced there.

Inputs and outputs are bound to device buffers, learnt once per input signature from a first
run whose outputs ONNX Runtime allocates. Those outputs, which its arena keeps anyway, become
the first buffer set; a second set (alternating: the reduction of one run overlaps the next
run) exists only within the memory bound: ``--gpu-memory`` (device memory in use after the
first run, plus the set, must fit it; ONNX Runtime's CUDA arena is capped at it too), or by
default where the two sets together stay within max(2 GiB, 25% of the rest of what the first
run left in use) and half of the free memory. Inputs are staged by the
prefetch thread into pinned memory and copied on a copy stream while the previous run
computes. Each run's tensors are reduced by three fused launches (:mod:`calibkit.collect.cuda.fused`)
on a reduction stream; the host never waits per tensor, only, before reusing a buffer set,
for the reduction that last read it.

Padding is removed along each tensor's own batch axis (``Plan.axes``): a padded run reduces
contiguous copies of the valid part. Tensors without a batch axis (only on unpadded models:
see collect.py) are small; they are copied to the host and counted once per sample there.
"""

from __future__ import annotations

import numpy as np

from calibkit import optional
from calibkit.collect.plan import Plan, check_guards, ort_run, pad_batch
from calibkit.data import FeedStats
from calibkit.data.feed import _take
from calibkit.data.prefetch import PinnedStager, prefetch
from calibkit.errors import CalibkitError
from calibkit.numerics.histogram import TensorHistogram

ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int16)": np.int16,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(uint16)": np.uint16,
    "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64,
    "tensor(bool)": np.bool_,
}
FLOATS = (np.float16, np.float32, np.float64)


def available() -> bool:
    """The CUDA collector can run: CuPy is installed (it is imported only when used)."""
    return optional.available("cupy")


def ortvalue_to_cupy(value):
    """Wrap a CUDA OrtValue as a CuPy array without copying (keeps the OrtValue alive)."""
    import cupy as cp

    dtype = ORT_TYPES.get(value.data_type())
    if dtype is None:
        return None
    shape = tuple(value.shape())
    nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    mem = cp.cuda.UnownedMemory(value.data_ptr(), nbytes, owner=value)
    return cp.ndarray(shape, dtype=dtype, memptr=cp.cuda.MemoryPointer(mem, 0))


class BufferSet:
    """One run's bound device buffers: inputs, outputs, and the reduction table over them."""

    def __init__(
        self,
        cp,
        sess,
        inputs: dict[str, tuple],
        outputs: dict[str, tuple],
        reduced: list[str],
        hists,
        device_id: int,
        adopt: dict | None = None,
    ) -> None:
        """``adopt``: {output: device array} to bind instead of allocating (the first run's)."""
        adopt = adopt or {}
        self.inputs = {k: cp.empty(shape, dtype) for k, (shape, dtype) in inputs.items()}
        self.outputs = {k: adopt[k] if k in adopt else cp.empty(shape, dtype) for k, (shape, dtype) in outputs.items()}
        self.binding = sess.io_binding()
        for k, a in self.inputs.items():
            self.binding.bind_input(k, "cuda", device_id, a.dtype, a.shape, a.data.ptr)
        for k, a in self.outputs.items():
            self.binding.bind_output(k, "cuda", device_id, a.dtype, a.shape, a.data.ptr)
        arrays = {**self.inputs, **self.outputs}
        self.table = hists.table({k: arrays[k] for k in reduced if k in arrays and arrays[k].dtype in FLOATS})
        self.done = None  # event: the last reduction reading these buffers
        self.copied = None  # event: the input copy into these buffers


DEFAULT_EXTRA = 2 << 30  # bytes both buffer sets may take by default, or 25% of the first run's use


def second_set(set_bytes: int, used: int, free: int, limit: int | None) -> bool:
    """Whether a second buffer set (overlapping reduction with the next run) fits the bound.
    ``used``/``free``: device memory after the first run (ORT's arena keeps that run's outputs:
    about one set)."""
    if limit is not None:
        return used + set_bytes <= limit
    return 2 * set_bytes <= max(DEFAULT_EXTRA, (used - set_bytes) // 4) and set_bytes < free // 2


class DeviceCollector:
    def __init__(self, p: Plan, run_batch: int, device_id: int = 0, gpu_memory: int | None = None) -> None:
        import cupy as cp

        from calibkit.collect.cuda.fused import FusedHistograms

        self.cp, self.p, self.run_batch, self.device_id = cp, p, run_batch, device_id
        self.gpu_memory = gpu_memory
        acts = [o for o in p.outputs if o not in p.guards]
        self.float_inputs = [s.name for s in p.specs if s.dtype.kind == "f"]
        batched = [n for n in [*self.float_inputs, *acts] if isinstance(p.axes.get(n), int) or p.axes.get(n) == "?"]
        self.on_device = set(batched)
        self.hists = FusedHistograms(batched)
        self.host_hists = {n: TensorHistogram() for n in [*self.float_inputs, *acts] if n not in self.on_device}
        self.acts = acts
        self.non_float: set[str] = set()
        self.sets: list[BufferSet] = []
        self.signature = None
        self.turn = 0
        self.copy_stream = cp.cuda.Stream(non_blocking=True)
        self.reduce_stream = cp.cuda.Stream(non_blocking=True)

    # -- buffers -------------------------------------------------------------------------
    def _signature(self, feed) -> tuple:
        return tuple((k, v.shape, v.dtype.str) for k, v in sorted(feed.items()))

    def _run_unbound(self, feed) -> dict:
        """A run whose outputs ORT allocates (learns the shapes); returns {name: OrtValue}."""
        binding = self.p.sess.io_binding()
        for k, v in feed.items():
            binding.bind_cpu_input(k, np.ascontiguousarray(v))
        for name in self.p.outputs:
            binding.bind_output(name, "cuda", self.device_id)

        def run():
            self.p.sess.run_with_iobinding(binding)
            binding.synchronize_outputs()

        ort_run(run, self.p.model_name, self.p.source)
        return dict(zip(self.p.outputs, binding.get_outputs()))

    def _make_sets(self, feed, values: dict, wrapped: dict) -> None:
        """Buffer sets for this input signature (``values``: the first run's outputs, which give
        the shapes; ``wrapped``: the same as device arrays, adopted as the first set's outputs):
        one, and a second where the memory bound allows."""
        self.reduce_stream.synchronize()
        outs = {}
        for name, v in values.items():
            dtype = ORT_TYPES.get(v.data_type())
            if dtype is None:  # not a plain tensor: no preallocated binding for this model
                self.sets = []
                return
            outs[name] = (tuple(v.shape()), dtype)
        ins = {k: (v.shape, v.dtype) for k, v in feed.items()}
        size = sum(
            int(np.prod(sh, dtype=np.int64)) * np.dtype(dt).itemsize for sh, dt in [*ins.values(), *outs.values()]
        )
        free, total = self.cp.cuda.runtime.memGetInfo()
        used = total - free
        if self.gpu_memory is not None and used > self.gpu_memory:
            raise CalibkitError(
                f"--gpu-memory {self.gpu_memory / 2**30:.2f} GiB: one run of {self.run_batch} samples with every "
                f"calibrated tensor exposed leaves {used / 2**30:.2f} GiB of the GPU in use; lower --batch-size "
                "(results change with it on the GPU), --tensors qdq, or raise --gpu-memory"
            )
        args = (self.cp, self.p.sess, ins, outs, self.on_device, self.hists, self.device_id)
        self.sets = [BufferSet(*args, adopt={k: wrapped[k] for k in outs})]
        if second_set(size, used, free, self.gpu_memory):
            self.sets.append(BufferSet(*args))
        self.turn = 0

    # -- one run -------------------------------------------------------------------------
    def _reduce_values(self, feed, values: dict, n: int, padded: bool) -> None:
        """Reduce a run held in ``values`` ({name: cupy array}); padding removed if any."""
        arrays = {}
        for name in self.on_device:
            a = values.get(name)
            if a is None:
                continue
            if a.dtype not in FLOATS:
                self.non_float.add(name)
                continue
            axis = self.p.axes.get(name)
            arrays[name] = _take(a, axis, 0, n) if padded and isinstance(axis, int) else a
        with self.reduce_stream:
            self.hists.update(arrays, self.reduce_stream)
        self._host_side(feed, values, n)

    def _host_side(self, feed, values: dict, n: int) -> None:
        for name, h in self.host_hists.items():
            if name in feed:
                h.update(feed[name], weight=n if self.p.axes.get(name) is None else 1)
            elif name in values:
                a = values[name]
                if a.dtype not in FLOATS:
                    self.non_float.add(name)
                    continue
                h.update(a.get(), weight=n)
        if self.p.guards:
            check_guards(self.p, {g: values[g].get() for g in self.p.guards})

    def stage(self, feed, pinned: dict):
        """Start copying a batch into the next buffer set (the copy overlaps the run before it);
        returns what :meth:`execute` takes. Batches that need the slow path are not staged."""
        n = feed.samples
        if len(self.sets) < 2 or (self.p.pad and n < self.run_batch) or self._signature(feed) != self.signature:
            return feed, pinned, None
        bs = self._copy_into_next_set(pinned)
        bs.copied = self.copy_stream.record()
        return feed, pinned, bs

    def _copy_into_next_set(self, pinned: dict) -> BufferSet:
        """The next buffer set in turn, once free, with the inputs' copy queued on the copy stream."""
        bs = self.sets[self.turn]
        self.turn = (self.turn + 1) % len(self.sets)
        if bs.done is not None:
            bs.done.synchronize()  # the reduction that read this set two runs ago
        with self.copy_stream:
            for k, a in bs.inputs.items():
                a.set(pinned[k], stream=self.copy_stream)
        return bs

    def execute(self, staged) -> None:
        feed, pinned, bs = staged
        if bs is None:
            self.run(feed, pinned)
            return
        bs.copied.synchronize()
        self._run_set(bs, feed, pinned)

    def _run_set(self, bs: BufferSet, feed, pinned: dict) -> None:
        p = self.p

        def run():
            p.sess.run_with_iobinding(bs.binding)
            bs.binding.synchronize_outputs()

        try:
            ort_run(run, p.model_name, p.source)
        except Exception:
            self.sets, self.signature = [], None  # e.g. a data-dependent shape: relearn buffers
            self.run(feed, pinned)
            return
        with self.reduce_stream:
            self.hists.reduce(bs.table, self.reduce_stream)
        bs.done = self.reduce_stream.record()
        self._host_side(feed, {**bs.inputs, **bs.outputs}, feed.samples)

    def run(self, feed, pinned: dict) -> None:
        """One batch (``pinned``: its inputs staged in page-locked memory), not overlapped."""
        cp, p = self.cp, self.p
        n = feed.samples
        padded = p.pad and n < self.run_batch
        run_feed = pad_batch(feed, self.run_batch, p.specs) if padded else feed
        if padded:
            pinned = dict(run_feed)
        sig = self._signature(run_feed)
        if sig != self.signature or not self.sets:
            values = self._run_unbound(run_feed)
            wrapped = {k: ortvalue_to_cupy(v) for k, v in values.items()}
            for k, v in run_feed.items():
                wrapped[k] = cp.asarray(v)
            self._reduce_values(feed, wrapped, n, padded)
            self.reduce_stream.synchronize()
            self.signature = sig
            self._make_sets(run_feed, values, wrapped)  # the first set keeps these OrtValues as its outputs
            return
        bs = self._copy_into_next_set(pinned)
        self.copy_stream.synchronize()

        if not padded:
            self._run_set(bs, feed, pinned)
            return

        def run():
            p.sess.run_with_iobinding(bs.binding)
            bs.binding.synchronize_outputs()

        ort_run(run, p.model_name, p.source)
        self._reduce_values(feed, {**bs.inputs, **bs.outputs}, n, True)
        bs.done = self.reduce_stream.record()

    def finish(self) -> dict[str, TensorHistogram]:
        self.reduce_stream.synchronize()
        hists = {**self.host_hists, **self.hists.to_host()}
        for name in self.non_float:
            hists.pop(name, None)
        return hists


def collect_device(
    p: Plan, batches, stats: FeedStats, run_batch: int, progress, workers: int = 0, gpu_memory: int | None = None
) -> dict[str, TensorHistogram]:
    stats.run_batch = run_batch
    col = DeviceCollector(p, run_batch, gpu_memory=gpu_memory)
    drive(col, batches, PinnedStager([s.name for s in p.specs]), progress, stats)
    return col.finish()


def drive(col: DeviceCollector, batches, stager, progress=None, stats=None) -> None:
    """Run every batch: read ahead by a thread, each input copy overlapping the previous run."""
    prev = None
    for feed, pinned in prefetch(batches, stage=stager, depth=4):
        if prev is not None and prev[2] is None:  # the slow path claims sets itself: nothing may be staged
            col.execute(prev)
            prev = None
        cur = col.stage(feed, pinned)  # its copy overlaps the previous run
        if prev is not None:
            col.execute(prev)
        prev = cur
        if progress:
            progress(stats.samples)
    if prev is not None:
        col.execute(prev)
