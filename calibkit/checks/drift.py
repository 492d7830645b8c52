"""``calibkit drift``: has new data moved away from what a calibration saw?

New data streams through the same collection as ``calibrate`` (same data options, GPU path;
the calibration's ``--batch-axis`` when none is given);
its histograms are compared, per tensor, with the stored calibration histograms:

- ``clipped_new``: the fraction of new values that saturate INT8 under the calibrated amax
  (|x| beyond amax plus half a step), next to ``clipped_calib``, the same fraction of the
  calibration's own values; ``excess`` is their difference (0 for the same data);
- ``distance``: the Kolmogorov-Smirnov distance between the two |x| distributions (the largest
  gap between their cumulative fractions, 0..1), exact on the shared power-of-two bins;
- ``mse_old`` / ``mse_fresh``: the expected INT8 error (histogram-exact, as ``--method auto``
  computes it) of the new values under the old amax and under an amax freshly chosen on the
  new data by the same method; ``mse_ratio`` = old / fresh.

``max_clip``: a tensor whose ``excess`` is above it is due for recalibration (NaN counts as due).
Outputs (``output_dir``): ``drift.json`` and the new data's ``histograms.npz`` (mergeable with the
calibration's: ``calibkit merge``), published as one set.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from calibkit import methods
from calibkit.artifacts import histograms as store
from calibkit.artifacts import scales as scales_io
from calibkit.collect.host import Collection, collect
from calibkit.data import applied_preprocess, open_source, preprocess_fingerprint, resolve_preprocess
from calibkit.data.images import Preprocess
from calibkit.data.options import FeedOptions
from calibkit.errors import CalibkitError
from calibkit.graph.model import check_fingerprint, fingerprint_file, has_external, input_specs, load
from calibkit.methods.auto import expected_mse
from calibkit.numerics.clipping import saturated_fraction
from calibkit.numerics.histogram import TensorHistogram, fold
from calibkit.outputs.publish import Transaction

DRIFT = "drift.json"
FORMAT = "calibkit-drift"


def ks_distance(a: TensorHistogram, b: TensorHistogram) -> float:
    """Largest gap between the cumulative |x| fractions of ``a`` and ``b`` (bins aligned
    exactly by folding the narrower range); NaN when either has no finite value."""
    ta, tb = int(a.counts.sum()), int(b.counts.sum())
    if ta == 0 or tb == 0:
        return math.nan
    e = max(a.exp, b.exp)
    ca = np.cumsum(fold(a.counts, e - a.exp)) / ta
    cb = np.cumsum(fold(b.counts, e - b.exp)) / tb
    return float(np.max(np.abs(ca - cb)))


@dataclass
class TensorDrift:
    tensor: str
    amax: float  # calibrated
    amax_fresh: float  # chosen on the new data by the same method
    absmax_calib: float
    absmax_new: float
    clipped_calib: float
    clipped_new: float
    distance: float
    mse_old: float
    mse_fresh: float

    @property
    def excess(self) -> float:
        return self.clipped_new - self.clipped_calib

    @property
    def mse_ratio(self) -> float:
        if self.mse_fresh > 0:
            return self.mse_old / self.mse_fresh
        return 1.0 if self.mse_old == 0 else math.inf

    def due(self, max_clip: float) -> bool:
        return not self.excess <= max_clip  # NaN is due (fail closed)

    def to_dict(self) -> dict[str, Any]:
        def num(v: float):
            return v if math.isfinite(v) else None

        return {
            "tensor": self.tensor,
            "amax": self.amax,
            "amax_fresh": self.amax_fresh,
            "absmax_calib": self.absmax_calib,
            "absmax_new": self.absmax_new,
            "clipped_calib": self.clipped_calib,
            "clipped_new": self.clipped_new,
            "excess_clipped": num(self.excess),
            "distance": num(self.distance),
            "mse_old": self.mse_old,
            "mse_fresh": self.mse_fresh,
            "mse_ratio": num(self.mse_ratio),
        }


@dataclass
class DriftResult:
    rows: list[TensorDrift]  # worst excess first
    method: str
    calib_samples: int
    new_samples: int
    histograms: store.HistogramSet  # the new data's
    missing: list[str] = field(default_factory=list)  # calibrated tensors the new data did not reach
    max_clip: float | None = None
    # {tensor: (NaN, Inf)} where the new data has non-finite values the calibration did not
    nonfinite: dict[str, tuple[int, int]] = field(default_factory=dict)
    outputs: dict[str, Path] = field(default_factory=dict)
    collection: Collection | None = None

    def due(self) -> list[TensorDrift]:
        return [] if self.max_clip is None else [r for r in self.rows if r.due(self.max_clip)]

    def passed(self) -> bool:
        """Fails closed: NaN/Inf the calibration never saw is drift too."""
        return self.max_clip is None or (not self.due() and not self.missing and not self.nonfinite)

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "format": FORMAT,
            "version": 1,
            "method": self.method,
            "calibration_samples": self.calib_samples,
            "new_samples": self.new_samples,
            "tensors": [r.to_dict() for r in self.rows],
            "missing": self.missing,
            "nonfinite": {k: {"nan": n, "inf": i} for k, (n, i) in self.nonfinite.items()},
        }
        if self.max_clip is not None:
            doc["max_clip"] = {
                "limit": self.max_clip,
                "due": [r.tensor for r in self.due()],
                "passed": self.passed(),
            }
        return doc


def compare(
    calib: store.HistogramSet,
    new: store.HistogramSet,
    amax: dict[str, float],
    method: str,
    config: Any = None,
) -> tuple[list[TensorDrift], list[str]]:
    """Per tensor of ``amax`` (the calibrated values): its drift on ``new`` (rows, worst first),
    and the tensors ``new`` holds no values for."""
    fresh = scales_io.compute(new, method, config).amax() if new.tensors else {}
    rows, missing = [], []
    for name, a in amax.items():
        h_new, h_old = new.tensors.get(name), calib.tensors.get(name)
        if h_new is None or h_new.count == 0:
            missing.append(name)
            continue
        old_clip = saturated_fraction(h_old, a) if h_old is not None else math.nan
        mse = expected_mse(h_new, [a, fresh[name]])
        rows.append(
            TensorDrift(
                name,
                a,
                fresh[name],
                h_old.amax if h_old is not None else math.nan,
                h_new.amax,
                old_clip,
                saturated_fraction(h_new, a),
                ks_distance(h_old, h_new) if h_old is not None else math.nan,
                float(mse[0]),
                float(mse[1]),
            )
        )
    rows.sort(key=lambda r: (-(r.excess if math.isfinite(r.excess) else math.inf), -r.distance, r.tensor))
    return rows, sorted(missing)


def nonfinite_news(calib: store.HistogramSet, new: store.HistogramSet) -> dict[str, tuple[int, int]]:
    """{tensor: (NaN, Inf)} of the new data, where the calibration had none of that kind."""
    out = {}
    for name, h in new.tensors.items():
        old = calib.tensors.get(name)
        nan = h.nan if h.nan and not (old is not None and old.nan) else 0
        inf = h.inf if h.inf and not (old is not None and old.inf) else 0
        if nan or inf:
            out[name] = (int(nan), int(inf))
    return out


def drift(
    model: str | Path,
    histograms: str | Path,
    data: Any,
    method: str = "entropy",
    config: Any = None,
    scales: str | Path | None = None,
    max_clip: float | None = None,
    output_dir: str | Path | None = None,
    batch_size: int | None = None,
    preprocess: Preprocess | None = None,
    allow_preprocess_mismatch: bool = False,
    device: str = "auto",
    feed: FeedOptions | None = None,
    force: bool = False,
    progress: Callable[[int], None] | None = None,
    on_source: Callable[[Any], None] | None = None,
) -> DriftResult:
    """``model`` calibrated into ``histograms`` (its amax from ``method``, or from ``scales``),
    against new ``data``; see the module docstring."""
    if max_clip is not None and (
        isinstance(max_clip, bool) or not isinstance(max_clip, (int, float)) or not 0 <= max_clip <= 1
    ):
        raise CalibkitError(f"--max-clip {max_clip!r}: give a fraction of a tensor's values in [0, 1], e.g. 0.001")
    model_path = Path(model)
    proto = load(model_path, keep_external=True)
    model_fp = fingerprint_file(model_path)
    calib = store.load(histograms)
    check_fingerprint(calib.meta.get("model_fingerprint"), model_fp, f"histograms {histograms}", force)
    if config is None:
        method, config = methods.parse_spec(method)
    if scales is not None:
        table = scales_io.read(scales)
        check_fingerprint((table.meta.get("model") or {}).get("fingerprint"), model_fp, f"scales {scales}", force)
        theirs = ((table.meta.get("data") or {}).get("fingerprint"), table.meta.get("tensor_selection", "all"))
        mine = (calib.meta.get("data_fingerprint"), calib.meta.get("tensor_selection", "all"))
        if theirs != mine and not force:
            raise CalibkitError(
                f"scales {scales} come from another calibration than histograms {histograms} (data "
                f"{str(theirs[0])[:24]}... with --tensors {theirs[1]} vs data {str(mine[0])[:24]}... with --tensors {mine[1]}): "
                "drift compares new data with the calibration those scales were chosen on; give the histograms.npz "
                "of the same run (--force to compare anyway)"
            )
        amax, label = table.amax(), f"{table.method} (from {scales})"
    else:
        amax, label = scales_io.compute(calib, method, config).amax(), methods.spec_of(method, config)
    feed = FeedOptions.of(feed)
    recorded = calib.meta.get("batch_axes") or {}
    if not feed.batch_axes and isinstance(recorded, dict) and recorded:  # the calibration's --batch-axis
        axes = {str(k): (None if v == "none" else int(v)) for k, v in recorded.items()}
        feed = FeedOptions(axes, feed.rebatch and calib.meta.get("rebatch", True) is not False, feed.max_samples)
    selection = calib.meta.get("tensor_selection", "all")
    pre = resolve_preprocess(preprocess, calib.meta.get("preprocess"), data, allow_preprocess_mismatch, str(histograms))
    specs = input_specs(proto, feed.batch_axes)
    source = open_source(data, specs, pre)
    if on_source:
        on_source(source)
    collection = collect(
        proto,
        source,
        batch_size,
        device=device,
        progress=progress,
        model_name=model_path.name,
        specs=specs,
        feed=feed,
        external_dir=str(model_path.parent) if has_external(proto) else None,
        hash_stream=not getattr(source, "hashes_files", False),
        **({"tensors": selection} if selection != "all" else {}),  # the tensors the calibration collected
    )
    stats = collection.stats
    applied = applied_preprocess(source)
    new = store.HistogramSet(
        collection.tensors,
        {
            "model_name": model_path.name,
            "model_fingerprint": model_fp,
            "data_fingerprint": source.fingerprint() or "streamed:" + stats.streamed_fingerprint(),
            "data": source.description,
            "preprocess": applied.to_dict() if applied is not None else None,
            "preprocess_fingerprint": preprocess_fingerprint(source),
            "samples": stats.samples,
            "dropped_samples": stats.dropped,
            **feed.meta(),
            "samples_limited": stats.limited,
            "uncalibrated": collection.uncalibrated,
            **({"tensor_selection": selection, "skipped": collection.skipped} if selection != "all" else {}),
        },
    )
    rows, missing = compare(calib, new, amax, method, config)
    result = DriftResult(rows, label, calib.samples, new.samples, new, missing, max_clip, collection=collection)
    result.nonfinite = nonfinite_news(calib, new)
    if output_dir is not None:
        with Transaction(Path(output_dir), "drift") as tx:
            result.outputs["histograms"] = store.save(new, "histograms.npz", tx)
            text = json.dumps(result.to_dict(), indent=1, allow_nan=False) + "\n"
            result.outputs["drift"] = tx.write_text(tx.directory / DRIFT, text)
            tx.commit()
    return result
