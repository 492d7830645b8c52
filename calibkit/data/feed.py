"""Validate source batches against the model's inputs and re-batch them to the run size.

Whatever batch sizes a source yields, the model runs on batches of exactly ``run_batch``
samples (a smaller last batch, or a new batch where a dynamic shape changes), so the
activations, and so every histogram, do not depend on how the data was chunked.

Each input has its own sample axis (``InputSpec.axis``: ``[2, N, 128]`` state has it on 1);
batches are cut and joined along it. Inputs without one (0-d scalars, shared state) are
passed whole to every run; a change in their value starts a new batch. ``rebatch=False``
runs the source's feeds exactly as given (complete feeds a loader built itself).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from calibkit.data.base import DataSource, Feed, hash_feed
from calibkit.data.options import FeedOptions
from calibkit.errors import CalibkitError
from calibkit.graph.model import InputSpec


class Batch(dict):
    """A feed dict that knows its number of samples (``len`` of an input is not it when the
    first input is a scalar or has its samples on another axis). Sampled inputs come first."""

    samples: int = 0


@dataclass
class FeedStats:
    samples: int = 0
    batches: int = 0
    dropped: int = 0
    run_batch: int = 0
    limited: bool = False  # --max-samples stopped the stream
    digest: hashlib._Hash = field(default_factory=hashlib.sha256)

    def streamed_fingerprint(self) -> str:
        return "sha256:" + self.digest.hexdigest()


def _take(a: np.ndarray, axis: int, start: int, stop: int) -> np.ndarray:
    index = [slice(None)] * a.ndim
    index[axis] = slice(start, stop)
    return a[tuple(index)]


def _convert(a: np.ndarray, spec: InputSpec, where: str) -> np.ndarray:
    if a.dtype == spec.dtype:
        return a
    same_kind = a.dtype.kind == spec.dtype.kind or (a.dtype.kind in "iu" and spec.dtype.kind in "iu")
    if not same_kind:
        raise CalibkitError(
            f"{where}: input {spec.name!r} is {a.dtype} but the model expects {spec.dtype}; "
            f"convert it (e.g. astype({spec.dtype.name}) and the model's preprocessing)"
        )
    return a.astype(spec.dtype)


def _check_one(a: np.ndarray, spec: InputSpec, where: str) -> np.ndarray:
    ax = spec.axis
    if a.ndim != len(spec.shape):
        what = "a 0-d scalar" if a.ndim == 0 else f"shape {tuple(a.shape)} (rank {a.ndim})"
        axis_note = "no sample axis" if ax is None else f"samples on axis {ax}"
        raise CalibkitError(
            f"{where}: input {spec.name!r} is {what} but the model expects {spec.describe()} (rank {len(spec.shape)}, {axis_note})"
        )
    for axis, dim in enumerate(spec.shape):
        if axis != ax and isinstance(dim, int) and a.shape[axis] != dim:
            fix = f"resize the data, or set its sample axis with --batch-axis {spec.name}:AXIS"
            if where.startswith("images ") and {a.shape[axis], dim} <= {1, 3, 4}:  # the image channels
                fix = (
                    f"the images decode to {a.shape[axis]} channel(s) and the model takes {dim}: give --preprocess "
                    f"(a preprocess.json with \"channels\": \"{'L' if dim == 1 else 'RGB'}\", or the options it holds)"
                )
            raise CalibkitError(
                f"{where}: input {spec.name!r} has size {a.shape[axis]} on axis {axis} but the model fixes it "
                f"to {dim} ({spec.describe()}); {fix}"
            )
    return _convert(a, spec, where)


def check_feed(feed: Feed, specs: list[InputSpec], where: str) -> Batch:
    """Validate and convert one source feed; the Batch's ``samples`` is its sample count."""
    if not isinstance(feed, dict):
        raise CalibkitError(f"{where} yielded {type(feed).__name__}; expected a dict {{input_name: array}}")
    names = {s.name for s in specs}
    missing = [s.name for s in specs if s.name not in feed]
    extra = [k for k in feed if k not in names]
    if extra and not names:
        raise CalibkitError(
            f"{where} has input {extra[0]!r} but the model declares no inputs (it computes constants): there is nothing to feed it"
        )
    if extra:
        raise CalibkitError(
            f"{where} has input {extra[0]!r} but the model's inputs are: {', '.join(sorted(names))}; rename the data key"
        )
    if missing:
        raise CalibkitError(f"{where} lacks model input {missing[0]!r}; the model needs: {', '.join(sorted(names))}")
    out = Batch()
    n = None
    first = None
    for spec in sorted(specs, key=lambda s: (s.axis is None, s.axis or 0)):
        a = _check_one(np.asarray(feed[spec.name]), spec, where)
        if spec.axis is not None:
            count = a.shape[spec.axis]
            if n is None:
                n, first = count, spec.name
            elif count != n:
                raise CalibkitError(
                    f"{where}: inputs disagree on the number of samples ({n} for {first!r} vs {count} on axis {spec.axis} of {spec.name!r}); "
                    f"set the sample axis with --batch-axis {spec.name}:AXIS (or {spec.name}:none to pass it whole)"
                )
        out[spec.name] = a
    out.samples = 1 if n is None else n  # no sampled input: a feed is one sample
    return out


def _signature(feed: Batch, specs: list[InputSpec]) -> tuple:
    sig = []
    for s in specs:
        a = feed[s.name]
        if s.axis is None:
            sig.append((s.name, a.shape, a.dtype.str, hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()))
        else:
            sig.append((s.name, a.shape[: s.axis] + a.shape[s.axis + 1 :]))
    return tuple(sig)


def _cut(joined: Batch, specs: list[InputSpec], start: int, stop: int) -> Batch:
    out = Batch()
    for s in specs:
        v = joined[s.name]
        out[s.name] = v if s.axis is None else _take(v, s.axis, start, stop)
    out.samples = stop - start
    return out


def _join(parts: list[Batch], specs: list[InputSpec]) -> Batch:
    if len(parts) == 1:
        return parts[0]
    out = Batch()
    for s in specs:
        out[s.name] = parts[0][s.name] if s.axis is None else np.concatenate([p[s.name] for p in parts], axis=s.axis)
    out.samples = sum(p.samples for p in parts)
    return out


def run_batches(
    source: DataSource,
    specs: list[InputSpec],
    run_batch: int | Callable[[], int],
    stats: FeedStats,
    feed: FeedOptions | None = None,
    hash_stream: bool = True,
) -> Iterator[Batch]:
    """Validated feeds of exactly ``run_batch`` samples (but the last of each shape run).

    ``run_batch`` may be a callable, asked again before each batch is cut (the collector
    sizes batches from the activation bytes of the first one); it is never taken below 1,
    and no batch is ever empty. ``max_samples`` stops the stream after that many samples.
    ``hash_stream=False`` skips the streamed fingerprint (sources that hash their files).
    """
    feed = FeedOptions.of(feed)
    rebatch, max_samples = feed.rebatch, feed.max_samples
    asked = run_batch if callable(run_batch) else (lambda: run_batch)
    fixed = {s.fixed_batch for s in specs} - {None}
    if len(fixed) > 1:
        raise CalibkitError(
            f"model inputs fix different batch sizes {sorted(fixed)}; set each input's sample axis with --batch-axis NAME:AXIS"
        )
    fixed_size = fixed.pop() if fixed else None

    def size() -> int:
        return fixed_size if fixed_size is not None else max(1, int(asked() or 1))

    if max_samples is not None and max_samples < 1:
        raise CalibkitError(f"--max-samples must be >= 1, got {max_samples}")
    sampled = any(s.axis is not None for s in specs)
    pending: list[Batch] = []
    count = 0
    signature = None
    where = source.description

    def emit(final: bool) -> Iterator[Batch]:
        nonlocal pending, count
        if not pending:
            return
        joined = _join(pending, specs)
        start = 0
        while count - start >= size() or (final and count > start):
            n = min(size(), count - start)
            if fixed_size is not None and n != fixed_size:
                stats.dropped += n
                break
            stats.batches += 1
            yield _cut(joined, specs, start, start + n)
            start += n
        pending = [_cut(joined, specs, start, count)] if count > start and not final else []
        count = count - start if not final else 0

    for raw in source.batches():
        feed = check_feed(raw, specs, where)
        n = feed.samples
        if n == 0:
            continue
        if max_samples is not None and stats.samples + n > max_samples:
            n = max_samples - stats.samples
            feed = _cut(feed, specs, 0, n) if sampled else feed
            stats.limited = True
        if hash_stream:
            hash_feed(stats.digest, feed, specs)
        stats.samples += n
        if not rebatch:
            stats.batches += 1
            yield feed
        else:
            sig = _signature(feed, specs)
            if signature is not None and sig != signature:
                yield from emit(final=True)
            signature = sig
            pending.append(feed)
            count += n
            if count >= size():
                yield from emit(final=False)
        if max_samples is not None and stats.samples >= max_samples:
            stats.limited = True
            break
    yield from emit(final=True)
    if stats.samples == 0:
        raise CalibkitError(f"{where} yielded no samples; give data with at least one sample")
