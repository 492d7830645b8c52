"""Reading ahead: a thread pulls batches (decoding, validation, hashing) into a bounded queue.

Order is preserved (one producer, FIFO), so results do not depend on it. NumPy copies and
hashlib release the GIL, so the reading overlaps the GPU's work. An error in the producer is
raised in the consumer at the point in the stream where it happened.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator

import numpy as np

_END = object()


class _Failed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def prefetch(items: Iterable, stage: Callable | None = None, depth: int = 4) -> Iterator:
    """Yield ``(item, stage(item))`` (or ``item`` when ``stage`` is None) read ahead by a thread."""
    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(x) -> bool:
        while not stop.is_set():
            try:
                q.put(x, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((item, stage(item)) if stage is not None else item):
                    return
        except BaseException as exc:  # re-raised by the consumer
            put(_Failed(exc))
            return
        put(_END)

    t = threading.Thread(target=produce, name="calibkit-prefetch", daemon=True)
    t.start()
    try:
        while True:
            x = q.get()
            if x is _END:
                return
            if isinstance(x, _Failed):
                raise x.exc
            yield x
    finally:
        stop.set()
        t.join()


def empty_pinned(shape: tuple, dtype) -> np.ndarray:
    """A NumPy array in page-locked host memory (what ``cupyx.empty_pinned`` does, without
    importing cupyx: its sparse linear algebra costs about 0.5 s at start-up, bench/gpu_split.py)."""
    import cupy as cp

    dtype = np.dtype(dtype)
    count = int(np.prod(shape, dtype=np.int64))
    mem = cp.cuda.alloc_pinned_memory(max(1, count * dtype.itemsize))
    return np.ndarray(shape, dtype=dtype, buffer=mem)


class PinnedStager:
    """Copies each batch's inputs into page-locked buffers, reused round robin.

    ``slots`` must exceed the batches that can be alive at once: the prefetch queue's depth,
    one being staged and two held by the consumer (current and next).
    """

    def __init__(self, names: list[str], slots: int = 8, threads: int = 4) -> None:
        self.names = names
        self.slots = slots
        self.threads = threads
        self.pool = None
        self.buffers: dict[tuple, list[np.ndarray]] = {}
        self.turn: dict[tuple, int] = {}

    def _buffer(self, shape: tuple, dtype: np.dtype) -> np.ndarray:
        key = (shape, np.dtype(dtype).str)
        bufs = self.buffers.setdefault(key, [])
        i = self.turn.get(key, 0)
        self.turn[key] = (i + 1) % self.slots
        if i >= len(bufs):
            bufs.append(empty_pinned(shape, dtype))
        return bufs[i]

    def __call__(self, feed) -> dict[str, np.ndarray]:
        out = {}
        for k in self.names:
            v = np.asarray(feed[k])
            buf = self._buffer(v.shape, v.dtype)
            self._copy(buf, v)
            out[k] = buf
        return out

    def _copy(self, dst: np.ndarray, src: np.ndarray) -> None:
        """np.copyto, split over threads for big arrays (memcpy releases the GIL)."""
        if dst.nbytes < (8 << 20) or dst.ndim == 0 or dst.shape[0] < 2 or self.threads < 2:
            np.copyto(dst, src)
            return
        if self.pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="calibkit-stage")
        cuts = np.linspace(0, dst.shape[0], min(self.threads, dst.shape[0]) + 1).astype(int)
        list(self.pool.map(lambda ab: np.copyto(dst[ab[0] : ab[1]], src[ab[0] : ab[1]]), zip(cuts[:-1], cuts[1:])))


def _apply_chunk(fn: Callable, items: list, arg) -> list:
    return [fn(x, arg) for x in items]


def ordered_map(fn: Callable, items: list, arg, workers: int, chunk: int = 4, ahead: int = 4) -> Iterator:
    """``fn(item, arg)`` for every item, computed by ``workers`` spawned processes, yielded in
    order; at most ``workers * ahead`` chunks are in flight (a bounded queue, not the whole list)."""
    from collections import deque
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    chunks = [items[i : i + chunk] for i in range(0, len(items), chunk)]
    import os

    from calibkit.executor.orphans import init_worker, quiet_cancelled_results, spawning

    with ProcessPoolExecutor(
        max_workers=workers, mp_context=get_context("spawn"), initializer=init_worker, initargs=(os.getpid(),)
    ) as pool:
        pending: deque = deque()
        it = iter(chunks)
        try:
            for c in it:
                with spawning():
                    pending.append(pool.submit(_apply_chunk, fn, c, arg))
                if len(pending) >= workers * ahead:
                    yield from pending.popleft().result()
            while pending:
                yield from pending.popleft().result()
        finally:
            if pending:
                quiet_cancelled_results()  # the manager thread may still set a result of one cancelled here
            for f in pending:
                f.cancel()
            pool.shutdown(wait=False, cancel_futures=True)  # Ctrl-C: do not wait for queued decoding
