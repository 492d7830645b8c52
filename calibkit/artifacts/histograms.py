"""The stored histogram set (``histograms.npz``): versioned, fingerprinted, mergeable.

Written as a zip with fixed timestamps, so the same histograms give the same bytes.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from calibkit.errors import CalibkitError
from calibkit.numerics.histogram import E_MIN, NUM_BINS, TensorHistogram, range_exponent
from calibkit.outputs.atomic import write_with

MAX_EXP = 1025  # float64's largest finite |x| is below 2**1024

FORMAT = "calibkit-histograms"
VERSION = 1
_EPOCH = (1980, 1, 1, 0, 0, 0)


@dataclass
class HistogramSet:
    tensors: dict[str, TensorHistogram]
    meta: dict = field(default_factory=dict)

    @property
    def samples(self) -> int:
        return int(self.meta.get("samples", 0))

    def merge(self, other: HistogramSet, where: str = "histograms") -> HistogramSet:
        mine, theirs = self.meta.get("model_fingerprint"), other.meta.get("model_fingerprint")
        if mine != theirs:
            raise CalibkitError(
                f"{where} comes from another model ({theirs} vs {mine}); merge histograms of one model only"
            )
        a, b = {f for f, _ in _shards(self.meta)}, {f for f, _ in _shards(other.meta)}
        dup = sorted(a & b)
        if dup:
            raise CalibkitError(
                f"{where} holds data already merged (shard fingerprint {dup[0]}); each shard may be merged once"
            )
        # a part of `calibrate --shards` is "<whole>#part-i-of-K": it overlaps its whole set
        part_of = sorted(f for f in a | b if "#part-" in f and f.split("#part-", 1)[0] in a | b)
        if part_of:
            raise CalibkitError(
                f"{where}: {part_of[0]} is a part of the whole set {part_of[0].split('#part-', 1)[0]} also being merged; "
                "its samples would count twice: merge the whole set, or its parts, not both"
            )
        sel_a, sel_b = self.meta.get("tensor_selection", "all"), other.meta.get("tensor_selection", "all")
        if sel_a != sel_b:
            raise CalibkitError(
                f"{where} was collected with --tensors {sel_b} and the histograms it is merged with with --tensors "
                f"{sel_a}: a tensor in one selection only would count part of the samples; collect every shard with "
                "the same --tensors"
            )
        for name, h in other.tensors.items():
            if name in self.tensors:
                self.tensors[name].merge(h)
            else:
                self.tensors[name] = h.copy()
        self.meta["samples"] = self.samples + other.samples
        self.meta["dropped_samples"] = int(self.meta.get("dropped_samples", 0)) + int(
            other.meta.get("dropped_samples", 0)
        )
        if self.meta.get("preprocess_fingerprint") != other.meta.get("preprocess_fingerprint"):
            self.meta["preprocess_fingerprint"] = "mixed"
        # Order-free provenance, so merging A+B and B+A gives the same bytes.
        shards = sorted(_shards(self.meta) + _shards(other.meta))
        self.meta["shards"] = shards
        self.meta["data_fingerprint"] = "merged:" + ",".join(f for f, _ in shards)
        self.meta["data"] = "merged: " + ", ".join(d for _, d in shards)
        return self


def _shards(meta: dict) -> list[list[str]]:
    return [list(x) for x in meta.get("shards", [[str(meta.get("data_fingerprint")), str(meta.get("data"))]])]


def _npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def save(hset: HistogramSet, path: str | Path, tx=None) -> Path:
    names = list(hset.tensors)
    hs = [hset.tensors[n] for n in names]
    arrays = {
        "names": np.array(names, dtype=np.str_) if names else np.zeros(0, dtype="<U1"),
        "counts": np.stack([h.counts for h in hs]) if hs else np.zeros((0, NUM_BINS), np.int64),
        "exp": np.array([h.exp for h in hs], dtype=np.int32),
        "minmax": np.array([[h.min, h.max] for h in hs], dtype=np.float64).reshape(-1, 2),
        "tallies": np.array([[h.count, h.nan, h.inf] for h in hs], dtype=np.int64).reshape(-1, 3),
        "meta": np.frombuffer(
            json.dumps({"format": FORMAT, "version": VERSION, **hset.meta}, sort_keys=True).encode(), dtype=np.uint8
        ),
    }

    def writer(fh) -> None:
        with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for key, arr in arrays.items():
                info = zipfile.ZipInfo(key + ".npy", date_time=_EPOCH)
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, _npy_bytes(arr))

    return write_with(path, writer, tx)


def _check(p: Path, names, counts, exps, minmax, tallies) -> None:
    n = len(names) if names.ndim == 1 else -1
    shapes_ok = (
        n >= 0
        and counts.ndim == 2
        and counts.shape[1:] == (NUM_BINS,)
        and len(counts) == n
        and exps.shape == (n,)
        and minmax.shape == (n, 2)
        and tallies.shape == (n, 3)
    )
    if not shapes_ok:
        raise CalibkitError(
            f"{p} is corrupt: histogram arrays have inconsistent shapes; rewrite it with `calibkit calibrate MODEL --data DATA --recollect`"
        )
    if (
        names.dtype.kind != "U"
        or counts.dtype.kind not in "iu"
        or exps.dtype.kind not in "iu"
        or tallies.dtype.kind not in "iu"
        or minmax.dtype.kind != "f"
    ):
        raise CalibkitError(
            f"{p} is corrupt: histogram arrays have the wrong types; rewrite it with `calibkit calibrate MODEL --data DATA --recollect`"
        )
    if len(set(names.tolist())) != n:
        raise CalibkitError(
            f"{p} is corrupt: a tensor name appears twice; rewrite it with `calibkit calibrate MODEL --data DATA --recollect`"
        )
    for i in range(n):
        name, exp, (lo, hi), (count, nan, inf) = str(names[i]), int(exps[i]), minmax[i], tallies[i]
        bad = None
        if not E_MIN <= exp <= MAX_EXP:
            bad = f"range exponent {exp} outside [{E_MIN}, {MAX_EXP}]"
        elif (counts[i] < 0).any() or min(count, nan, inf) < 0:
            bad = "negative counts"
        elif int(counts[i].sum()) != int(count):
            bad = f"bin counts sum to {int(counts[i].sum())} but count is {int(count)}"
        elif count and not (
            math.isfinite(lo) and math.isfinite(hi) and lo <= hi and max(-lo, hi, 0.0) < math.ldexp(1.0, exp)
        ):
            bad = f"min/max {lo}/{hi} are not finite values within the range 2^{exp}"
        elif count and exp != range_exponent(max(-lo, hi, 0.0)):
            bad = f"range exponent {exp} is not the one max|x| = {max(-lo, hi, 0.0):.6g} sets ({range_exponent(max(-lo, hi, 0.0))})"
        elif not count and not (lo == math.inf and hi == -math.inf):
            bad = f"min/max {lo}/{hi} given for a tensor with no values"
        if bad:
            raise CalibkitError(
                f"{p} is corrupt: tensor {name!r}: {bad}; rewrite it with `calibkit calibrate MODEL --data DATA --recollect`"
            )


def load(path: str | Path) -> HistogramSet:
    from calibkit.outputs.publish import verify
    from calibkit.outputs.sets import settle

    p = Path(path)
    settle(p)  # finish a publish cut off after its commit point before reading (then verify after)
    if p.is_dir():
        raise CalibkitError(f"histograms {p} is a directory; pass the histograms.npz file")
    if not p.is_file():
        from calibkit.graph.model import not_a_file

        why = not_a_file(p)
        hint = (
            "run `calibkit calibrate` first or fix the path" if why == "not found" else "pass the histograms.npz file"
        )
        raise CalibkitError(f"histograms {p} {why}; {hint}")
    try:
        with np.load(p, allow_pickle=False) as z:
            if "meta" not in z.files:
                raise CalibkitError(
                    f"{p} is not a calibkit histogram file (no metadata); pass the histograms.npz calibkit wrote"
                )
            meta = json.loads(bytes(z["meta"]).decode())
            if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
                raise CalibkitError(
                    f"{p} is not a calibkit histogram file (format {got!r}); pass the histograms.npz calibkit wrote"
                )
            shards = meta.get("shards", [])
            shards_ok = isinstance(shards, list) and all(
                isinstance(x, list) and len(x) == 2 and all(isinstance(v, str) for v in x) for x in shards
            )
            ints_ok = all(
                isinstance(meta.get(k, 0), int) and not isinstance(meta.get(k, 0), bool) and meta.get(k, 0) >= 0
                for k in ("version", "samples", "dropped_samples")
            )
            if not (ints_ok and shards_ok):
                raise CalibkitError(
                    f"{p} is corrupt: its metadata has the wrong types; rewrite it with `calibkit calibrate MODEL --data DATA --recollect`"
                )
            if meta.get("version", 0) > VERSION:
                raise CalibkitError(
                    f"{p} has histogram format version {meta['version']}; this calibkit reads up to {VERSION}: upgrade calibkit"
                )
            names, counts, exps = z["names"], z["counts"], z["exp"]
            minmax, tallies = z["minmax"], z["tallies"]
    except CalibkitError:
        raise
    except Exception as exc:
        raise CalibkitError(
            f"{p} is not a readable calibkit histogram file ({type(exc).__name__}); make it again with `calibkit calibrate MODEL --data DATA --recollect`"
        ) from None
    _check(p, names, counts, exps, minmax, tallies)
    verify(p)
    tensors = {
        str(n): TensorHistogram(
            counts[i].astype(np.int64),
            int(exps[i]),
            float(minmax[i, 0]),
            float(minmax[i, 1]),
            *(int(t) for t in tallies[i]),
        )
        for i, n in enumerate(names)
    }
    meta.pop("format", None)
    meta.pop("version", None)
    return HistogramSet(tensors, meta)


def merge_files(paths: list[str | Path]) -> HistogramSet:
    if not paths:
        raise CalibkitError("merge needs at least one histogram file")
    total = load(paths[0])
    for p in paths[1:]:
        total.merge(load(p), where=str(p))
    return total


def check_names(hset: HistogramSet, model_tensors: set[str], where: str) -> None:
    """Every histogram names a tensor of the model (``model_tensors``); else the file was edited
    or is another model's, and the scales written from it would name tensors no build has."""
    foreign = sorted(set(hset.tensors) - model_tensors)
    if foreign:
        raise CalibkitError(
            f"{where} hold {len(foreign)} tensor(s) this model does not have ({', '.join(map(repr, foreign[:4]))}"
            f"{', ...' if len(foreign) > 4 else ''}); the file was edited or is another model's: recollect with --data"
        )
