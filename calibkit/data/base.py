"""The data-source protocol: a re-iterable stream of feed batches.

A source yields ``{input_name: ndarray}`` dicts whose arrays share a leading sample axis
(any size). Sources never hold more than one chunk in memory. ``fingerprint()`` hashes what
the source reads (file bytes, loader source), or returns None when only streaming can tell.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

import numpy as np

from calibkit.errors import CalibkitError

Feed = dict[str, np.ndarray]


class DataSource(Protocol):
    description: str

    def batches(self) -> Iterator[Feed]: ...

    def fingerprint(self) -> str | None: ...

    def num_samples(self) -> int | None: ...


def hash_files(paths: Iterable[Path], root: Path | None = None) -> str:
    """sha256 over (relative name, bytes) of each file, in the order given."""
    h = hashlib.sha256()
    for p in paths:
        name = str(p.relative_to(root)) if root else p.name
        h.update(name.encode() + b"\0")
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        h.update(b"\0")
    return "sha256:" + h.hexdigest()


def hash_feed(h: hashlib._Hash, feed: Feed, specs: list | None = None) -> None:
    """Add one batch to a running hash sample by sample (so batching does not matter).

    ``specs`` give each input's sample axis (default: axis 0); an input without one (a
    scalar, shared state) is hashed whole into every sample."""
    axes = (
        {s.name: s.axis for s in specs}
        if specs is not None
        else {k: (0 if np.ndim(v) else None) for k, v in feed.items()}
    )
    names = sorted(feed)
    n = getattr(feed, "samples", None)
    if n is None:
        n = next((feed[k].shape[axes[k]] for k in names if axes.get(k) is not None), 1) if feed else 0
    whole = {}
    for name in names:
        if axes.get(name) is None:
            a = np.ascontiguousarray(feed[name])
            whole[name] = f"{name}|{a.dtype.str}|{a.shape}|whole|".encode() + hashlib.sha256(a.tobytes()).digest()
    for i in range(n):
        for name in names:
            if name in whole:
                h.update(whole[name])
                continue
            a = np.ascontiguousarray(np.take(feed[name], i, axis=axes[name]))
            h.update(f"{name}|{a.dtype.str}|{a.shape}".encode())
            h.update(a.tobytes())


class IterableSource:
    """Any Python iterable (or a zero-argument callable returning one) of feed dicts."""

    def __init__(self, data, description: str = "python iterable") -> None:
        self._data = data
        self.description = description

    def batches(self) -> Iterator[Feed]:
        it = self._data() if callable(self._data) else self._data
        for i, feed in enumerate(it):
            if not isinstance(feed, dict):
                raise CalibkitError(
                    f"{self.description} yielded {type(feed).__name__} (item {i}); expected a dict {{input_name: array}}"
                )
            out = {}
            for k, v in feed.items():
                try:
                    # a copy: loaders often refill one buffer per batch (or write into the array
                    # they just yielded), while the rebatcher still holds slices of earlier items
                    out[k] = np.array(v, copy=True)
                except (ValueError, TypeError) as exc:  # ragged lists, unconvertible objects
                    why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                    raise CalibkitError(
                        f"{self.description}: input {k!r} of item {i} is not an array ({why}); yield numpy arrays shaped [N, ...]"
                    ) from None
            yield out

    def fingerprint(self) -> str | None:
        return None

    def num_samples(self) -> int | None:
        return None
