"""Histograms -> per-tensor INT8 scales with a registered method; ``scales.json`` I/O."""

from __future__ import annotations

import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from calibkit import methods
from calibkit.artifacts.histograms import HistogramSet
from calibkit.errors import CalibkitError
from calibkit.methods.auto import expected_mse
from calibkit.numerics.clipping import saturated_fraction
from calibkit.numerics.formats import (
    FLOAT32_MAX,
    TINY_AMAX,
    as_float32,
    degenerate,
    int8_scale,
    usable_amax,
)  # noqa: F401  (re-exported)
from calibkit.outputs.atomic import write_text

FORMAT = "calibkit-scales"
VERSION = 1


@dataclass
class ScaleTable:
    method: str
    params: dict[str, Any]
    tensors: dict[str, dict[str, Any]]
    meta: dict[str, Any] = field(default_factory=dict)

    def amax(self) -> dict[str, float]:
        return {n: t["amax"] for n, t in self.tensors.items()}

    def scales(self) -> dict[str, float]:
        return {n: t.get("scale") or int8_scale(t["amax"]) for n, t in self.tensors.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            **self.meta,
            "method": {"name": self.method, "params": self.params},
            "tensors": self.tensors,
        }

    def dumps(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=False, allow_nan=False) + "\n"

    def write(self, path: str | Path, tx=None) -> Path:
        return write_text(path, self.dumps(), tx)


def device_amaxes(hset: HistogramSet, method: str, cfg: Any, device: str) -> dict[str, Any] | None:
    """Every tensor's amax from one batched GPU computation (the same choices as the host
    methods: calibkit/methods/cuda.py), or None: CPU asked, no GPU/CuPy, or a method it lacks."""
    if device == "cpu" or not hset.tensors:
        return None
    from calibkit.methods import cuda as gpu_methods

    if methods.get(method).cuda is None or getattr(cfg, "fp8", 0) or not gpu_methods.available():  # GPU: INT8 grid only
        return None
    return gpu_methods.amaxes(hset.tensors, method, cfg)


def compute(hset: HistogramSet, method: str, config: Any = None, threads: int = 0, device: str = "cpu") -> ScaleTable:
    """Run ``method`` on every tensor (threads share the numpy work; the result is order-free).
    ``device`` "auto"/"cuda": the built-in methods' bins are chosen on the GPU when one is usable."""
    spec = methods.get(method)
    cfg = config if config is not None else spec.config_cls()
    names = list(hset.tensors)
    pre = device_amaxes(hset, method, cfg, device)

    def one(name: str) -> dict[str, Any]:
        h = hset.tensors[name]
        if pre is not None:
            raw, detail = pre[name] if isinstance(pre[name], tuple) else (pre[name], {})
        else:
            raw, detail = spec.detail(h, cfg) if spec.detail else (spec.amax(h, cfg), {})
        amax = as_float32(float(raw))
        if amax == math.inf or h.amax > FLOAT32_MAX:
            raise CalibkitError(
                f"tensor {name!r} reaches |x| = {h.amax:.4g}, beyond the float32 range: no INT8 scale can represent it; "
                "fix the data (float64 input out of range?) or keep this tensor out of INT8"
            )
        if h.count == 0 and (h.nan or h.inf):
            raise CalibkitError(
                f"tensor {name!r} held only NaN/Inf ({h.nan} NaN, {h.inf} Inf, no finite value) over all the data given: "
                "no scale can be derived; check the data and its preprocessing (or the model)"
            )
        unusable = degenerate(amax)
        amax = usable_amax(amax)
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
            "clipped": saturated_fraction(h, amax),
            "expected_mse": float(expected_mse(h, [amax])[0]),
            "range_exp": h.exp,
            "degenerate": unusable,
            **detail,
        }

    # numpy releases the GIL in the heavy parts of the host methods; with the amaxes already chosen on
    # the GPU only small per-tensor statistics are left, and threads cost more than they save there
    # (H200 host: 39-58 ms on one thread vs 83-109 ms on eight for ~400 tensors; bench/gpu.h200.log)
    threads = threads or (1 if pre is not None else min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=threads) as pool:
        rows = list(pool.map(one, names))
    return ScaleTable(method, methods.config_params(cfg), dict(zip(names, rows)))


STAT_KEYS = ("min", "max", "absmax", "count", "nan", "inf", "clipped", "expected_mse")  # optional per-tensor statistics


def _finite(x: Any) -> bool:
    """A real JSON number, not a bool, not NaN/inf (ints of any size: no float conversion)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and (isinstance(x, int) or math.isfinite(x))


def check_value(name: str, amax: Any, scale: Any, where: str) -> None:
    """One tensor's amax/scale usable by TensorRT and ONNX Runtime, else a CalibkitError."""
    from calibkit.artifacts.trt_cache import check_name

    check_name(name, where)
    ok_amax = _finite(amax) and TINY_AMAX <= amax <= FLOAT32_MAX
    if not ok_amax:
        raise CalibkitError(
            f"{where}: tensor {name!r} has amax {amax!r}; an amax must be a finite float32 number >= {TINY_AMAX:.3g} (re-run calibrate)"
        )
    if scale is not None:
        if not (_finite(scale) and scale > 0):
            raise CalibkitError(
                f"{where}: tensor {name!r} has scale {scale!r}; scales must be finite and > 0 (re-run calibrate)"
            )
        if scale != int8_scale(amax):
            raise CalibkitError(
                f"{where}: tensor {name!r} has scale {scale!r} but amax {amax!r} gives {int8_scale(amax)!r} (scale = float32(amax) / 127 in float32); "
                'when editing amax by hand, delete the tensor\'s "scale" field and it is derived, or re-run calibrate'
            )


def check_table(table: ScaleTable, where: str = "scales") -> None:
    for name, t in table.tensors.items():
        check_value(name, t.get("amax"), t.get("scale"), where)


def read(path: str | Path) -> ScaleTable:
    from calibkit.outputs.publish import verify
    from calibkit.outputs.sets import settle

    p = Path(path)
    settle(p)  # finish a publish cut off after its commit point before reading (then verify after)
    if not p.is_file() and not p.is_dir():  # a FIFO would block the read for good
        from calibkit.graph.model import not_a_file

        raise CalibkitError(f"scales {p} {not_a_file(p)}; pass the scales.json file")
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CalibkitError(f"scales {p} not found; run `calibkit calibrate` first") from None
    except IsADirectoryError:
        raise CalibkitError(f"scales {p} is a directory; pass the scales.json file") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError, or an integer of > 4300 digits
        raise CalibkitError(
            f"scales {p} is not valid JSON ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); re-run calibrate"
        ) from None
    except RecursionError:
        raise CalibkitError(f"scales {p} is not valid JSON (nested too deeply); re-run calibrate") from None
    except OSError as exc:
        raise CalibkitError(f"cannot read scales {p}: {exc.strerror}") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise CalibkitError(f'{p} is not a calibkit scales.json (no "format": "{FORMAT}")')
    version = raw.get("version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise CalibkitError(f"{p}: version {version!r} is not an integer; re-run calibrate")
    if version > VERSION:
        raise CalibkitError(f"{p} has scales format version {version}; upgrade calibkit")
    tensors, m = raw.get("tensors", {}), raw.get("method", {})
    if not isinstance(tensors, dict) or not all(isinstance(t, dict) for t in tensors.values()):
        raise CalibkitError(
            f'{p}: "tensors" must map each tensor name to an object with amax and scale; re-run calibrate'
        )
    if not isinstance(m, dict) or not isinstance(m.get("params", {}), dict):
        raise CalibkitError(f'{p}: "method" must be an object with name and params; re-run calibrate')
    for key in ("model", "data", "preprocess", "cache", "clip_warnings"):
        if raw.get(key) is not None and not isinstance(raw[key], dict):
            raise CalibkitError(f'{p}: "{key}" must be an object or null; re-run calibrate')
    for name, t in tensors.items():
        check_value(name, t.get("amax"), t.get("scale"), str(p))
        for key in STAT_KEYS:
            if t.get(key) is not None and not _finite(t[key]):
                raise CalibkitError(
                    f"{p}: tensor {name!r} has {key} {t[key]!r}; it must be a finite number or null; re-run calibrate"
                )
    verify(p)
    # a null section is an absent one (readers use meta.get(key, {})): never None further on
    meta = {k: v for k, v in raw.items() if k not in ("format", "version", "method", "tensors") and v is not None}
    return ScaleTable(str(m.get("name", "?")), m.get("params", {}), tensors, meta)


def most_clipped(table: ScaleTable, n: int = 5) -> list[tuple[str, float]]:
    rows = sorted(
        ((name, float(t.get("clipped") or 0.0)) for name, t in table.tensors.items()), key=lambda r: (-r[1], r[0])
    )
    return [r for r in rows[:n] if r[1] > 0]


def nonfinite(table: ScaleTable) -> list[tuple[str, int, int]]:
    return [(n, t.get("nan", 0), t.get("inf", 0)) for n, t in table.tensors.items() if t.get("nan") or t.get("inf")]
