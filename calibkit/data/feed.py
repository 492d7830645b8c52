"""Validate source batches against the model's inputs and re-batch them to the run size.

Whatever batch sizes a source yields, the model runs on batches of exactly ``run_batch``
samples (a smaller last batch, or a new batch where a dynamic shape changes), so the
activations, and so every histogram, do not depend on how the data was chunked.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from calibkit.data.base import DataSource, Feed, hash_feed
from calibkit.errors import CalibkitError
from calibkit.onnx_model import InputSpec


@dataclass
class FeedStats:
    samples: int = 0
    batches: int = 0
    dropped: int = 0
    run_batch: int = 0
    digest: hashlib._Hash = field(default_factory=hashlib.sha256)

    def streamed_fingerprint(self) -> str:
        return "sha256:" + self.digest.hexdigest()


def _check(feed: Feed, specs: list[InputSpec], where: str) -> Feed:
    if not isinstance(feed, dict):
        raise CalibkitError(f"{where} yielded {type(feed).__name__}; expected a dict {{input_name: array}}")
    names = {s.name for s in specs}
    missing = [n for n in names if n not in feed]
    extra = [k for k in feed if k not in names]
    if extra:
        raise CalibkitError(
            f"{where} has input {extra[0]!r} but the model's inputs are: {', '.join(sorted(names))}; rename the data key"
        )
    if missing:
        raise CalibkitError(f"{where} lacks model input {missing[0]!r}; the model needs: {', '.join(sorted(names))}")
    out: Feed = {}
    n = None
    for spec in specs:
        a = np.asarray(feed[spec.name])
        if a.ndim != len(spec.shape):
            raise CalibkitError(
                f"{where}: input {spec.name!r} has shape {tuple(a.shape)} (rank {a.ndim}) but the model expects "
                f"{spec.describe()} (rank {len(spec.shape)}, leading axis = samples)"
            )
        for axis, dim in enumerate(spec.shape[1:], start=1):
            if isinstance(dim, int) and a.shape[axis] != dim:
                raise CalibkitError(
                    f"{where}: input {spec.name!r} has size {a.shape[axis]} on axis {axis} but the model fixes it "
                    f"to {dim} ({spec.describe()}); resize or re-export the data"
                )
        if a.dtype != spec.dtype:
            same_kind = a.dtype.kind == spec.dtype.kind or (a.dtype.kind in "iu" and spec.dtype.kind in "iu")
            if not same_kind:
                raise CalibkitError(
                    f"{where}: input {spec.name!r} is {a.dtype} but the model expects {spec.dtype}; "
                    f"convert it (e.g. astype({spec.dtype.name}) and the model's preprocessing)"
                )
            a = a.astype(spec.dtype)
        if n is None:
            n = a.shape[0]
        elif a.shape[0] != n:
            raise CalibkitError(f"{where}: inputs disagree on the number of samples ({n} vs {a.shape[0]} for {spec.name!r})")
        out[spec.name] = a
    return out


def run_batches(source: DataSource, specs: list[InputSpec], run_batch: int | Callable[[], int], stats: FeedStats) -> Iterator[Feed]:
    """Validated feeds of exactly ``run_batch`` samples (but the last of each shape run).

    ``run_batch`` may be a callable, asked again before each batch is cut (the collector
    sizes batches from the activation bytes of the first one).
    """
    size = run_batch if callable(run_batch) else (lambda: run_batch)
    fixed = {s.fixed_batch for s in specs} - {None}
    if len(fixed) > 1:
        raise CalibkitError(f"model inputs fix different batch sizes {sorted(fixed)}; calibkit needs one sample axis")
    fixed_size = bool(fixed)
    if fixed_size:
        forced = fixed.pop()
        size = lambda: forced  # noqa: E731
    pending: list[Feed] = []
    count = 0
    signature = None

    def emit(final: bool) -> Iterator[Feed]:
        nonlocal pending, count
        if not pending:
            return
        joined = {k: np.concatenate([p[k] for p in pending]) if len(pending) > 1 else pending[0][k] for k in pending[0]}
        start = 0
        while count - start >= size() or (final and count > start):
            n = min(size(), count - start)
            if fixed_size and n != size():
                stats.dropped += n
                break
            stats.batches += 1
            yield {k: v[start : start + n] for k, v in joined.items()}
            start += n
        rest = {k: v[start:] for k, v in joined.items()}
        pending = [rest] if count > start and not final else []
        count = count - start if not final else 0

    where = source.description
    for raw in source.batches():
        feed = _check(raw, specs, where)
        n = len(next(iter(feed.values())))
        if n == 0:
            continue
        sig = tuple(v.shape[1:] for v in feed.values())
        if signature is not None and sig != signature:
            yield from emit(final=True)
        signature = sig
        hash_feed(stats.digest, feed)
        stats.samples += n
        pending.append(feed)
        count += n
        if count >= size():
            yield from emit(final=False)
    yield from emit(final=True)
    if stats.samples == 0:
        raise CalibkitError(f"{where} yielded no samples; calibration needs at least one")
