"""``calibrate --shards K``: is the calibration set large enough?

The data is dealt into K disjoint parts (sample i goes to part i mod K, so an ordered set still
gives every part the same mix), each part is collected on its own and its histograms kept; the
histograms merge exactly, so the merged set is the one a plain ``calibrate`` collects (on the
CPU provider, bit for bit) and the scales are the usual ones. Each part is thresholded with the
same method: a tensor whose amax moves across parts by more than ``tolerance`` of the whole
set's amax depends on which samples were drawn, and more data is needed. Each part holds 1/K
of the data, so the spread is a pessimistic estimate of the whole set's: "stable" is meant.

Outputs, next to calibrate's: ``sufficiency.json`` and ``shards/part-I-of-K.histograms.npz``.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from calibkit import methods
from calibkit.artifacts import histograms as store
from calibkit.artifacts.scales import compute
from calibkit.calibration import CalibrateResult, stage_scales, write_scales
from calibkit.collect.host import collect
from calibkit.data import applied_preprocess, open_source, preprocess_fingerprint
from calibkit.data.feed import check_feed
from calibkit.data.images import ImageFolderSource, Preprocess
from calibkit.data.options import FeedOptions
from calibkit.errors import CalibkitError
from calibkit.graph.model import fingerprint_file, has_external, input_specs, load
from calibkit.numerics import clipping
from calibkit.outputs.publish import Transaction

DEFAULT_TOLERANCE = 0.05  # 5% of the whole set's amax
SUFFICIENCY = "sufficiency.json"


class PartSource:
    """Samples ``index, index + k, index + 2k, ...`` (below ``limit``) of a source, any kind."""

    def __init__(self, source, specs, index: int, k: int, limit: int) -> None:
        self.source, self.specs, self.index, self.k, self.limit = source, specs, index, k, limit
        self.description = f"{source.description} [part {index + 1} of {k}]"

    def fingerprint(self) -> str | None:
        return None

    def num_samples(self) -> int:
        return len(range(self.index, self.limit, self.k))

    def batches(self) -> Iterator[dict[str, np.ndarray]]:
        seen = 0
        for raw in self.source.batches():
            feed = check_feed(raw, self.specs, self.source.description)
            n = min(feed.samples, self.limit - seen)
            take = [j for j in range(n) if (seen + j) % self.k == self.index]
            seen += feed.samples
            if take:
                yield {
                    s.name: feed[s.name] if s.axis is None else np.take(feed[s.name], take, axis=s.axis)
                    for s in self.specs
                }
            if seen >= self.limit:
                return


def parts(source, specs, k: int, limit: int) -> list:
    if isinstance(source, ImageFolderSource):  # cut the file list: each image is decoded once
        out = []
        for i in range(k):
            p = copy.copy(source)
            p.files = source.files[:limit][i::k]
            p.description = f"{source.description} [part {i + 1} of {k}]"
            out.append(p)
        return out
    return [PartSource(source, specs, i, k, limit) for i in range(k)]


@dataclass
class TensorSpread:
    tensor: str
    amax: float  # the whole set's
    parts: list[float]  # each part's, same method
    regret: float = math.inf  # the most a part's amax raises the whole set's expected INT8 error (fraction)

    @property
    def spread(self) -> float:
        """(largest - smallest part amax) / the whole set's amax."""
        return (max(self.parts) - min(self.parts)) / self.amax if self.amax > 0 else math.inf

    def stable(self, tolerance: float) -> bool:
        """The parts agree on the amax, or disagree only where it costs nothing: each part's amax
        quantizes the whole set's values with an expected error within ``tolerance`` of the whole
        set's own choice (a tensor of a few distinct values can move its amax between two of them
        at no cost). NaN fails."""
        return self.spread <= tolerance or self.regret <= tolerance

    def to_dict(self) -> dict[str, Any]:
        return {
            "tensor": self.tensor,
            "amax": self.amax,
            "parts": self.parts,
            "spread": self.spread,
            "regret": self.regret,
        }


def regret(hist, amax: float, parts: list[float]) -> float:
    """max over parts of (E(part amax) - E(whole amax)) / E(whole amax), E the expected INT8
    quantization MSE of the whole set's values (methods/auto.py's criterion, exact on the histogram)."""
    from calibkit.methods.auto import expected_mse

    e = expected_mse(hist, [amax, *parts])
    if not np.all(np.isfinite(e)):
        return math.inf
    worst = float(e[1:].max() - e[0])
    if e[0] > 0:
        return max(worst, 0.0) / float(e[0])
    return 0.0 if worst <= 0 else math.inf


@dataclass
class Sufficiency:
    k: int
    tolerance: float
    samples: list[int]  # per part
    rows: list[TensorSpread] = field(default_factory=list)  # largest spread first
    identical: bool = False  # every part's histograms are the same: one sample (or batch) repeated?

    def unstable(self) -> list[TensorSpread]:
        return [r for r in self.rows if not r.stable(self.tolerance)]  # NaN: unstable (fail closed)

    @property
    def enough(self) -> bool:
        return bool(self.rows) and not self.unstable() and not self.identical

    def verdict(self) -> str:
        if not self.rows:
            return "no tensor to judge"
        if self.identical:
            return (
                f"check the data: all {self.k} parts hold exactly the same values in every tensor, so their "
                "agreement proves nothing (the same sample or batch repeated? a loader that yields one buffer?)"
            )
        worst = self.rows[0].spread
        if self.enough:
            costless = [r for r in self.rows if r.spread > self.tolerance]
            more = (
                f" ({len(costless)} tensor(s) move further, e.g. {costless[0].tensor}, but every part's amax costs at most "
                f"{max(r.regret for r in costless):.1%} more expected INT8 error on the whole set)"
                if costless
                else ""
            )
            return (
                f"stable: each of {self.k} parts of about {min(self.samples)} samples chooses every amax within "
                f"{self.tolerance:.0%} of the whole set's{more}"
            )
        bad = self.unstable()
        names = ", ".join(r.tensor for r in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        return (
            f"add data: {len(bad)} tensor(s) move by up to {worst:.0%} across {self.k} parts of about "
            f"{min(self.samples)} samples (tolerance {self.tolerance:.0%}): {names}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "calibkit-sufficiency",
            "version": 1,
            "shards": self.k,
            "tolerance": self.tolerance,
            "samples": self.samples,
            "enough": self.enough,
            "verdict": self.verdict(),
            "tensors": [r.to_dict() for r in self.rows],
        }


def spreads(
    whole: dict[str, float], part_sets: list[store.HistogramSet], method: str, config: Any, tolerance: float
) -> Sufficiency:
    per_part = [compute(p, method, config).amax() for p in part_sets]
    rows = []
    for n, a in whole.items():
        if not all(n in pa for pa in per_part):
            continue
        merged = part_sets[0].tensors[n].copy()  # the parts merge exactly into the whole set's
        for p in part_sets[1:]:
            merged.merge(p.tensors[n])
        parts_amax = [pa[n] for pa in per_part]
        rows.append(TensorSpread(n, a, parts_amax, regret(merged, a, parts_amax)))
    rows.sort(key=lambda r: (-(r.spread if math.isfinite(r.spread) else math.inf), r.tensor))
    first = part_sets[0].tensors
    identical = len(part_sets) > 1 and all(
        set(p.tensors) == set(first) and all(_same(p.tensors[n], first[n]) for n in first) for p in part_sets[1:]
    )
    return Sufficiency(len(part_sets), tolerance, [p.samples for p in part_sets], rows, identical)


def _same(a, b) -> bool:
    """Two histograms of exactly the same values (the same counts, range and non-finite counts)."""
    return (a.exp, a.count, a.nan, a.inf, a.min, a.max) == (b.exp, b.count, b.nan, b.inf, b.min, b.max) and bool(
        np.array_equal(a.counts, b.counts)
    )


def calibrate_shards(
    model: str | Path,
    data: Any,
    shards: int,
    method: str = "entropy",
    config: Any = None,
    output_dir: str | Path = ".",
    tolerance: float = DEFAULT_TOLERANCE,
    batch_size: int | None = None,
    preprocess: Preprocess | None = None,
    trt_version: str | None = None,
    cache_algorithm: str = "EntropyCalibration2",
    device: str = "auto",
    feed: FeedOptions | None = None,
    warn_clip: float = clipping.DEFAULT_WARN_CLIP,
    progress: Callable[[int], None] | None = None,
    on_source: Callable[[Any], None] | None = None,
    tensors: str = "all",
) -> tuple[CalibrateResult, Sufficiency]:
    """``calibrate`` with the data dealt into ``shards`` parts: the usual outputs, plus each
    part's histograms and the sufficiency report (module docstring)."""
    from calibkit.artifacts import trt_cache

    t0 = time.perf_counter()
    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 2:
        raise CalibkitError(f"--shards {shards!r}: give a number of parts >= 2 (4 is a good start)")
    if not (isinstance(tolerance, (int, float)) and math.isfinite(tolerance) and tolerance > 0):
        raise CalibkitError(f"--shard-tolerance {tolerance!r}: give a fraction > 0, e.g. 0.05 for 5%")
    feed = FeedOptions.of(feed)
    if not feed.rebatch:
        raise CalibkitError("--shards deals the data out sample by sample; it cannot be combined with --no-rebatch")
    if config is None:
        method, config = methods.parse_spec(method)
    warn_clip = clipping.check_limit(warn_clip)
    if cache_algorithm not in trt_cache.ALGORITHMS:
        raise CalibkitError(f"--cache-algorithm {cache_algorithm!r} must be one of {', '.join(trt_cache.ALGORITHMS)}")
    version_code = trt_cache.encode_version(
        trt_version or trt_cache.installed_trt_version() or trt_cache.DEFAULT_TRT_VERSION
    )
    # the output folder is locked from here, not only when publishing: a second run into it fails
    # at once instead of after all its collection (attack 5b: the later, shorter run won)
    with Transaction(Path(output_dir), "calibrate") as tx:
        model_path = Path(model)
        proto = load(model_path, keep_external=True)
        model_fp = fingerprint_file(model_path)
        specs = input_specs(proto, feed.batch_axes)
        source = open_source(data, specs, preprocess or Preprocess())
        total = source.num_samples()
        if total is None:
            raise CalibkitError(
                f"--shards needs to know how many samples {source.description} holds (an image folder, .npz or .npy); "
                "for a loader script, save its samples to an .npz first"
            )
        limit = min(total, feed.max_samples or total)
        if limit < 2 * shards:
            raise CalibkitError(f"--shards {shards}: {limit} samples cannot make {shards} parts of 2 or more samples")
        if on_source:
            on_source(source)
        part_feed = FeedOptions(feed.batch_axes, True, None)
        external = str(model_path.parent) if has_external(proto) else None
        fp = source.fingerprint()
        part_sets, done, collections = [], 0, []
        for p in parts(source, specs, shards, limit):
            col = collect(
                proto,
                p,
                batch_size,
                device=device,
                progress=(lambda n, base=done: progress(base + n)) if progress else None,
                model_name=model_path.name,
                specs=specs,
                feed=part_feed,
                external_dir=external,
                hash_stream=fp is None,
                **({"tensors": tensors} if tensors != "all" else {}),  # --tensors: as calibrate selects
            )
            collections.append(col)
            done += col.stats.samples
            part_sets.append(
                store.HistogramSet(
                    col.tensors,
                    {
                        "model_name": model_path.name,
                        "model_fingerprint": model_fp,
                        "data_fingerprint": f"{fp or 'streamed'}#part-{len(part_sets) + 1}-of-{shards}",
                        "data": p.description,
                        "samples": col.stats.samples,
                        "dropped_samples": col.stats.dropped,
                    },
                )
            )
        merged = store.HistogramSet({}, {"model_fingerprint": model_fp})
        for ps in part_sets:
            for name, h in ps.tensors.items():
                if name in merged.tensors:
                    merged.tensors[name].merge(h)
                else:
                    merged.tensors[name] = h.copy()
        applied = applied_preprocess(source)
        first = collections[0]
        merged.meta = {
            "model_name": model_path.name,
            "model_fingerprint": model_fp,
            "data_fingerprint": fp
            if fp is not None
            else "shards:" + ",".join(c.stats.streamed_fingerprint() for c in collections),
            "data": source.description,
            "preprocess": applied.to_dict() if applied is not None else None,
            "preprocess_fingerprint": preprocess_fingerprint(source),
            "samples": sum(c.stats.samples for c in collections),
            "dropped_samples": sum(c.stats.dropped for c in collections),
            **feed.meta(),
            "samples_limited": limit < total,
            "uncalibrated": first.uncalibrated,
            **({"tensor_selection": tensors, "skipped": first.skipped} if tensors != "all" else {}),
        }
        t_collect = time.perf_counter()
        table = compute(merged, method, config, device=device)
        t_thresh = time.perf_counter()
        report = spreads(table.amax(), part_sets, method, config, tolerance)
        staged = stage_scales(table, merged, model_path, model_fp, version_code, cache_algorithm, warn_clip)
        outputs = {"histograms": store.save(merged, "histograms.npz", tx)}
        for i, ps in enumerate(part_sets):
            store.save(ps, tx.directory / "shards" / f"part-{i + 1}-of-{shards}.histograms.npz", tx)
        outputs.update(write_scales(tx, staged, tx.directory))
        outputs["sufficiency"] = tx.write_text(
            tx.directory / SUFFICIENCY, json.dumps(report.to_dict(), indent=1, allow_nan=False) + "\n"
        )
        tx.commit()
        stats = first.stats
        stats_total = copy.copy(stats)
        stats_total.samples = merged.samples
        stats_total.batches = sum(c.stats.batches for c in collections)
        seconds = sum(c.seconds for c in collections)
        whole = copy.copy(first)
        whole.stats, whole.seconds, whole.tensors = stats_total, seconds, merged.tensors
        result = CalibrateResult(
            table,
            merged,
            outputs,
            None,
            whole,
            {"collect": t_collect - t0, "threshold": t_thresh - t_collect, "total": time.perf_counter() - t0},
            clipping.warnings(table, warn_clip),
            warn_clip,
        )
        return result, report
