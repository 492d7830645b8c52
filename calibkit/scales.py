"""Histograms -> per-tensor INT8 scales with a registered method; ``scales.json`` I/O."""

from __future__ import annotations

import json
import math
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from calibkit import methods
from calibkit.atomic import write_text
from calibkit.errors import CalibkitError
from calibkit.store import HistogramSet

FORMAT = "calibkit-scales"
VERSION = 1
DEGENERATE_AMAX = 1.0  # tensors with no non-zero finite value: any positive scale is exact


def as_float32(x: float) -> float:
    return struct.unpack("<f", struct.pack("<f", x))[0]


def int8_scale(amax: float) -> float:
    """float32(amax) / 127 in float32 arithmetic (one rounding), as ORT and TensorRT compute it."""
    return float(np.float32(amax) / np.float32(127.0))


@dataclass
class ScaleTable:
    method: str
    params: dict[str, Any]
    tensors: dict[str, dict[str, Any]]
    meta: dict[str, Any] = field(default_factory=dict)

    def amax(self) -> dict[str, float]:
        return {n: t["amax"] for n, t in self.tensors.items()}

    def scales(self) -> dict[str, float]:
        return {n: t["scale"] for n, t in self.tensors.items()}

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, **self.meta, "method": {"name": self.method, "params": self.params}, "tensors": self.tensors}

    def write(self, path: str | Path) -> Path:
        return write_text(path, json.dumps(self.to_dict(), indent=1, sort_keys=False) + "\n")


def compute(hset: HistogramSet, method: str, config: Any = None, threads: int = 0) -> ScaleTable:
    """Run ``method`` on every tensor (threads share the numpy work; the result is order-free)."""
    spec = methods.get(method)
    cfg = config if config is not None else spec.config_cls()
    names = list(hset.tensors)

    def one(name: str) -> dict[str, Any]:
        h = hset.tensors[name]
        amax = float(spec.amax(h, cfg))
        degenerate = not (math.isfinite(amax) and amax > 0)
        if degenerate:
            amax = DEGENERATE_AMAX
        amax = as_float32(amax)
        scale = int8_scale(amax)
        return {
            "amax": amax,
            "scale": scale,
            "min": h.min if h.count else None,
            "max": h.max if h.count else None,
            "absmax": h.amax,
            "count": h.count,
            "nan": h.nan,
            "inf": h.inf,
            "clipped": h.clipped_fraction(amax),
            "range_exp": h.exp,
            "degenerate": degenerate,
        }

    threads = threads or min(8, os.cpu_count() or 1)  # numpy releases the GIL in the heavy parts
    with ThreadPoolExecutor(max_workers=threads) as pool:
        rows = list(pool.map(one, names))
    return ScaleTable(method, methods.config_params(cfg), dict(zip(names, rows)))


def read(path: str | Path) -> ScaleTable:
    p = Path(path)
    try:
        raw = json.loads(p.read_text())
    except FileNotFoundError:
        raise CalibkitError(f"scales {p} not found; run `calibkit calibrate` first") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CalibkitError(f"scales {p} is not valid JSON ({exc}); re-run calibrate") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise CalibkitError(f"{p} is not a calibkit scales.json")
    if raw.get("version", 0) > VERSION:
        raise CalibkitError(f"{p} has scales format version {raw['version']}; upgrade calibkit")
    tensors = raw.get("tensors", {})
    for name, t in tensors.items():
        a = t.get("amax")
        if not (isinstance(a, (int, float)) and math.isfinite(a) and a > 0):
            raise CalibkitError(f"{p}: tensor {name!r} has invalid amax {a!r}")
    meta = {k: v for k, v in raw.items() if k not in ("format", "version", "method", "tensors")}
    m = raw.get("method", {})
    return ScaleTable(m.get("name", "?"), m.get("params", {}), tensors, meta)


def most_clipped(table: ScaleTable, n: int = 5) -> list[tuple[str, float]]:
    rows = sorted(((name, t["clipped"]) for name, t in table.tensors.items()), key=lambda r: (-r[1], r[0]))
    return [r for r in rows[:n] if r[1] > 0]


def nonfinite(table: ScaleTable) -> list[tuple[str, int, int]]:
    return [(n, t["nan"], t["inf"]) for n, t in table.tensors.items() if t["nan"] or t["inf"]]


