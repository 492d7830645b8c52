"""What changed between two calibrations: scales.json, TensorRT caches, histograms.npz, any pairing.

Each side is read as, per tensor, an amax (a cache's scale * 127; a histogram set's amax from
``method``), the fraction of its values it clips (recorded in scales.json, computed from a
histogram set, unknown for a cache), and the method that chose it. Two sides are matched by
tensor name: amax ratio B/A, clipped-fraction change, method change, tensors added/removed.
"""

from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from calibkit.errors import CalibkitError
from calibkit.numerics.formats import INT8

UNKNOWN = "?"  # a cache's method: the header names TensorRT's calibrator, not what chose the scales


@dataclass
class Side:
    path: str
    kind: str  # "scales" | "cache" | "histograms"
    method: str
    amax: dict[str, float]
    clipped: dict[str, float | None]
    methods: dict[str, str]  # per tensor (auto's pick), else the table's method
    samples: int | None = None


@dataclass
class Row:
    tensor: str
    amax_a: float
    amax_b: float
    clipped_a: float | None
    clipped_b: float | None
    method_a: str
    method_b: str

    @property
    def ratio(self) -> float:
        return self.amax_b / self.amax_a if self.amax_a > 0 else math.inf

    @property
    def change(self) -> float:
        """|amax B - amax A| / amax A: 0.08 when amax moved 8% up or down (inf: not comparable)."""
        r = self.ratio
        return abs(r - 1.0) if math.isfinite(r) else math.inf

    def to_dict(self) -> dict[str, Any]:
        return {
            "tensor": self.tensor,
            "amax_a": self.amax_a,
            "amax_b": self.amax_b,
            "ratio": self.ratio if math.isfinite(self.ratio) else None,
            "change": self.change if math.isfinite(self.change) else None,
            "clipped_a": self.clipped_a,
            "clipped_b": self.clipped_b,
            "method_a": self.method_a,
            "method_b": self.method_b,
        }


@dataclass
class Diff:
    a: Side
    b: Side
    rows: list[Row]  # common tensors, largest change first
    added: list[str] = field(default_factory=list)  # in B only
    removed: list[str] = field(default_factory=list)  # in A only

    def over(self, limit: float) -> list[Row]:
        return [r for r in self.rows if not r.change <= limit]  # NaN counts as over (fail closed)

    def method_changes(self) -> list[Row]:
        """Rows whose method differs (a cache does not record its method: never counted)."""
        return [r for r in self.rows if r.method_a != r.method_b and UNKNOWN not in (r.method_a, r.method_b)]

    def to_dict(self, limit: float | None = None) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "a": {"path": self.a.path, "kind": self.a.kind, "method": self.a.method, "tensors": len(self.a.amax)},
            "b": {"path": self.b.path, "kind": self.b.kind, "method": self.b.method, "tensors": len(self.b.amax)},
            "tensors": [r.to_dict() for r in self.rows],
            "added": self.added,
            "removed": self.removed,
        }
        if limit is not None:
            doc["max_change"] = {
                "limit": limit,
                "over": [r.tensor for r in self.over(limit)],
                "passed": self.passed(limit),
            }
        return doc

    def passed(self, limit: float) -> bool:
        """No tensor moved more than ``limit``, none appeared or vanished, and there was
        something to compare (two empty calibrations prove nothing: fail closed)."""
        return bool(self.rows) and not self.over(limit) and not self.added and not self.removed


TAKES = "diff takes two scales.json, .cache or histograms.npz files"


def _kind(p: Path) -> str:
    if not p.is_file():
        if p.is_symlink():
            raise CalibkitError(f"{p} is a symlink that leads nowhere (dangling, or a loop); {TAKES}")
        if p.exists():
            raise CalibkitError(f"{p} is not a regular file (a directory, FIFO or device); {TAKES}")
        raise CalibkitError(f"{p} not found; {TAKES}")
    try:
        with open(p, "rb") as fh:
            head = fh.read(64)
    except OSError as exc:
        raise CalibkitError(f"cannot read {p}: {exc.strerror or exc}") from None
    if head.startswith(b"PK\x03\x04"):
        if not zipfile.is_zipfile(p):
            raise CalibkitError(
                f"{p} starts like a histograms.npz (zip) but is damaged or cut short; re-run `calibkit calibrate` "
                "(or copy the file again)"
            )
        return "histograms"
    if zipfile.is_zipfile(p):
        return "histograms"
    return "scales" if head.lstrip().startswith(b"{") else "cache"


def read_side(path: str | Path, method: str = "entropy", config: Any = None) -> Side:
    """One calibration, whatever its file; a histogram set is thresholded with ``method``."""
    p = Path(path)
    kind = _kind(p)
    if kind == "scales":
        from calibkit import methods
        from calibkit.artifacts import scales

        t = scales.read(p)
        try:
            spec = methods.spec_of(t.method, methods.make_config(t.method, **t.params))
        except (CalibkitError, TypeError):  # a method this calibkit does not know
            spec = t.method
        samples = (t.meta.get("data") or {}).get("samples")
        return Side(
            str(p),
            kind,
            spec,
            {n: float(v["amax"]) for n, v in t.tensors.items()},
            {n: _frac(v.get("clipped")) for n, v in t.tensors.items()},
            {n: str(v.get("method") or spec) for n, v in t.tensors.items()},
            samples if isinstance(samples, int) else None,
        )
    if kind == "cache":
        from calibkit.artifacts import trt_cache

        c = trt_cache.read(p)
        amax = {n: float(s) * INT8.qmax for n, s in c.scales.items()}
        label = f"{c.header()} (method not recorded)"
        return Side(str(p), kind, label, amax, dict.fromkeys(amax), dict.fromkeys(amax, UNKNOWN))
    from calibkit import methods
    from calibkit.artifacts import histograms, scales

    hs = histograms.load(p)
    name, cfg = methods.parse_spec(method) if config is None else (method, config)
    table = scales.compute(hs, name, cfg)
    spec = methods.spec_of(name, cfg)
    return Side(
        str(p),
        kind,
        spec,
        {n: float(v["amax"]) for n, v in table.tensors.items()},
        {n: _frac(v.get("clipped")) for n, v in table.tensors.items()},
        {n: str(v.get("method") or spec) for n, v in table.tensors.items()},
        hs.samples,
    )


def _frac(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _as_cache_holds(side: Side) -> Side:
    """``side``'s amaxes as a TensorRT cache holds them (float32 scale, read back times 127), so
    a cache compared with the scales it was written from shows no change."""
    from dataclasses import replace

    from calibkit.numerics.formats import int8_scale

    return replace(side, amax={n: float(int8_scale(a)) * INT8.qmax for n, a in side.amax.items()})


def compare(a: Side, b: Side) -> Diff:
    if (a.kind == "cache") != (b.kind == "cache"):
        a, b = (a, _as_cache_holds(b)) if a.kind == "cache" else (_as_cache_holds(a), b)
    common = [n for n in a.amax if n in b.amax]
    rows = [
        Row(n, a.amax[n], b.amax[n], a.clipped.get(n), b.clipped.get(n), a.methods[n], b.methods[n]) for n in common
    ]
    rows.sort(key=lambda r: (-r.change, r.tensor))
    return Diff(a, b, rows, sorted(n for n in b.amax if n not in a.amax), sorted(n for n in a.amax if n not in b.amax))


def diff_files(path_a: str | Path, path_b: str | Path, method: str = "entropy") -> Diff:
    return compare(read_side(path_a, method), read_side(path_b, method))
