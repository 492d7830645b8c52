"""The backend-neutral side of a TensorRT calibrator: calibkit's data sources re-batched to
the engine's calibration batch, staged into device memory, and the cache read/written.

``CalibrationFeed`` knows nothing of TensorRT; calibrators.py wraps it in the classes
TensorRT calls. With a calibkit cache, ``read_cache`` returns it (re-headered for the
attached calibrator's algorithm and the installed TensorRT version), so TensorRT applies
calibkit's scales and asks for no batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from calibkit.artifacts import trt_cache as cache_io
from calibkit.data import FeedStats, Preprocess, open_source, run_batches
from calibkit.data.options import FeedOptions
from calibkit.errors import CalibkitError
from calibkit.graph.model import InputSpec
from calibkit.outputs.atomic import write_bytes
from calibkit.trt.device import DeviceMemory, open_device
from calibkit.trt.staging import Stager


class CalibrationFeed:
    def __init__(
        self,
        specs: list[InputSpec],
        algorithm: str,
        batch_size: int = 8,
        data=None,
        preprocess: Preprocess | None = None,
        opt_shapes: dict[str, tuple[int, ...]] | None = None,
        cache_in: str | Path | None = None,
        cache_out: str | Path | None = None,
        trt_version: str | None = None,
        device: DeviceMemory | None = None,
        rebatch: bool = True,
        max_samples: int | None = None,
    ) -> None:
        if data is None and cache_in is None:
            raise CalibkitError("INT8 calibration needs --data (TensorRT calibrates) or --cache (calibkit's scales)")
        self.specs = specs
        self.algorithm = algorithm
        self.opt_shapes = opt_shapes or {}
        fixed = {s.fixed_batch for s in specs} - {None}
        axis = {s.name: s.axis for s in specs}
        opt_batch = {
            shape[axis[name]]
            for name, shape in self.opt_shapes.items()
            if axis.get(name) is not None and axis[name] < len(shape)
        }
        self.batch_size = int(next(iter(fixed | opt_batch), batch_size))
        if len(fixed | opt_batch) > 1:
            raise CalibkitError(
                f"the calibration batch is ambiguous: model/--shapes OPT give batch sizes {sorted(fixed | opt_batch)}"
            )
        self.data, self.preprocess = data, preprocess
        self.rebatch, self.max_samples = rebatch, max_samples
        self.cache_in = Path(cache_in) if cache_in else None
        self.cache_out = Path(cache_out) if cache_out else None
        self.trt_version = trt_version or cache_io.DEFAULT_TRT_VERSION
        self._device = device
        self._stager: Stager | None = None
        self._batches: Iterator[dict[str, np.ndarray]] | None = None
        self.stats = FeedStats()
        self.batches_served = 0
        self.skipped = 0

    # -- cache ---------------------------------------------------------------------------
    def read_cache(self) -> bytes | None:
        if self.cache_in is None:
            return None
        c = cache_io.read(self.cache_in)
        c = cache_io.Cache(cache_io.encode_version(self.trt_version), self.algorithm, c.scales)
        return c.text().encode()

    def write_cache(self, data) -> None:
        if self.cache_out is not None:
            write_bytes(self.cache_out, bytes(data))

    # -- batches -------------------------------------------------------------------------
    def _iterate(self) -> Iterator[dict[str, np.ndarray]]:
        source = open_source(self.data, self.specs, self.preprocess)
        for feed in run_batches(
            source,
            self.specs,
            self.batch_size,
            self.stats,
            FeedOptions(rebatch=self.rebatch, max_samples=self.max_samples),
        ):
            n = feed.samples  # the feed's own count: a state [2, N, H] or a scalar input may come first
            if n != self.batch_size:  # TensorRT calibrates at one shape: a short last batch is dropped
                self.skipped += n
                continue
            for name, shape in self.opt_shapes.items():
                if name in feed and tuple(feed[name].shape) != tuple(shape):
                    raise CalibkitError(
                        f"calibration input {name!r} has shape {feed[name].shape} but TensorRT calibrates at the OPT shape {tuple(shape)}; match --shapes OPT to the data"
                    )
            yield _float32(feed)

    def next_pointers(self, names: list[str]) -> list[int] | None:
        """Device pointers of the next batch in ``names`` order, or None when the data is done."""
        if self.data is None:
            raise CalibkitError(
                f"TensorRT rejected the cache {self.cache_in} and asked for data; pass --data too, or recalibrate for this model"
            )
        if self._batches is None:
            self._batches = self._iterate()
            self._stager = Stager(self._device or open_device())
        feed = next(self._batches, None)
        if feed is None:
            return None
        self.batches_served += 1
        return self._stager.stage(feed, names)

    def close(self) -> None:
        if self._stager is not None:
            self._stager.close()
            self._stager = None


def _float32(feed):
    """TensorRT takes calibration batches of float tensors as float32 whatever the model's input
    type (Polygraphy converts too); index and bool inputs stay as they are."""
    for name in list(feed):
        a = feed[name]
        if isinstance(a, np.ndarray) and a.dtype.kind == "f" and a.dtype != np.float32:
            feed[name] = a.astype(np.float32)
    return feed
