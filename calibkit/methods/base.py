"""Registry of threshold methods: name -> (typed config class, bin selector).

A method turns one :class:`~calibkit.numerics.histogram.TensorHistogram` into an ``amax``. Adding a
method is one module that calls :func:`register`; ``--method`` choices come from here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from calibkit.errors import CalibkitError
from calibkit.numerics.histogram import TensorHistogram

AmaxFn = Callable[[TensorHistogram, Any], float]
DetailFn = Callable[[TensorHistogram, Any], tuple[float, dict[str, Any]]]
BatchFn = Callable[[dict[str, TensorHistogram], Any], dict[str, float]]


@dataclass(frozen=True)
class Method:
    name: str
    config_cls: type
    amax: AmaxFn
    summary: str
    detail: DetailFn | None = None  # (amax, per-tensor fields for scales.json), for methods that explain a choice
    cuda: BatchFn | None = None  # the same choices for many histograms in one GPU computation (methods/cuda.py)


REGISTRY: dict[str, Method] = {}


def register(name: str, config_cls: type, summary: str, detail: DetailFn | None = None) -> Callable[[AmaxFn], AmaxFn]:
    def deco(fn: AmaxFn) -> AmaxFn:
        REGISTRY[name] = Method(name, config_cls, fn, summary, detail)
        return fn

    return deco


def attach_cuda(name: str, host_amax: AmaxFn, fn: BatchFn) -> None:
    """Give the built-in method ``name`` its batched GPU implementation. A method registered
    again under that name (another ``amax``) keeps none: it runs on the host."""
    method = REGISTRY.get(name)
    if method is not None and method.amax is host_amax:
        REGISTRY[name] = dataclasses.replace(method, cuda=fn)


def names() -> list[str]:
    return sorted(REGISTRY)


def get(name: str) -> Method:
    try:
        return REGISTRY[name]
    except KeyError:
        raise CalibkitError(f"unknown method {name!r}; choose one of: {', '.join(names())}") from None


def make_config(name: str, **params: Any) -> Any:
    """Build the typed config of ``name`` from keyword parameters (None values ignored)."""
    method = get(name)
    fields = {f.name for f in dataclasses.fields(method.config_cls)}
    given = {k: v for k, v in params.items() if v is not None}
    unknown = sorted(set(given) - fields)
    if unknown:
        raise CalibkitError(
            f"method {name!r} takes no option {unknown[0]!r}; its options: {', '.join(sorted(fields)) or 'none'}"
        )
    try:
        return method.config_cls(**given)
    except (TypeError, ValueError) as exc:
        raise CalibkitError(f"bad option for method {name!r}: {exc}") from None


def parse_spec(spec: str) -> tuple[str, Any]:
    """``"percentile:99.99"`` -> ("percentile", PercentileConfig(percentile=99.99)).

    The text after ``:`` sets the method's first config field; ``name:key=value,...`` sets any.
    """
    name, _, arg = spec.strip().partition(":")
    method = get(name)
    if not arg:
        return name, method.config_cls()
    fields = dataclasses.fields(method.config_cls)
    if not fields:
        raise CalibkitError(f"method {name!r} takes no parameter (got {spec!r})")
    params: dict[str, Any] = {}
    for part in arg.split(","):
        key, eq, value = part.partition("=")
        if not eq:
            key, value = fields[0].name, part
        ftype = next((f.type for f in fields if f.name == key), "float")
        try:
            params[key] = int(value) if ftype in ("int", int) else float(value)
        except ValueError:
            raise CalibkitError(f"method spec {spec!r}: {value!r} is not a number") from None
    return name, make_config(name, **params)


def config_params(config: Any) -> dict[str, Any]:
    """The config as scales.json records it; a field marked ``omit_default`` (an option added
    later, such as ``fp8``) is left out at its default, so existing tables keep their bytes."""
    return {
        f.name: getattr(config, f.name)
        for f in dataclasses.fields(config)
        if not (f.metadata.get("omit_default") and getattr(config, f.name) == f.default)
    }


def grid_field() -> Any:
    """The ``fp8`` option of a method whose criterion is a quantization error: 0 measures it on
    INT8's grid (the default), 1 on FP8 E4M3FN's (scale amax / 448), for ``--precision fp8``."""
    return dataclasses.field(default=0, metadata={"omit_default": True})


def grid(config: Any):
    """The number format a config's error criterion is measured on (calibkit.numerics.formats)."""
    from calibkit.numerics.formats import FP8, INT8

    fp8 = getattr(config, "fp8", 0)
    if fp8 not in (0, 1):
        raise CalibkitError(f"method option fp8={fp8!r}: give 0 (INT8 grid) or 1 (FP8 E4M3FN grid)")
    return FP8 if fp8 else INT8


def spec_of(name: str, config: Any) -> str:
    """The spec that :func:`parse_spec` reads back as ``(name, config)``, options at their
    defaults left out: ``entropy``, ``percentile:99.9``, ``entropy:levels=64``."""
    fields = dataclasses.fields(config)
    shown = [f for f in fields if getattr(config, f.name) != f.default]
    if not shown:
        return name
    if len(fields) == 1 and not fields[0].metadata.get("omit_default"):
        return f"{name}:{getattr(config, fields[0].name)!r}"
    return f"{name}:" + ",".join(f"{f.name}={getattr(config, f.name)!r}" for f in shown)


def pick_near_min(screen: np.ndarray, exact: Callable[[int], float], last: bool, band: float = 1e-6) -> int:
    """Index of the minimum of ``exact`` over candidates, screened by the vectorised ``screen``.

    ``screen`` approximates ``exact`` to ~1e-11 or better; only candidates within ``band`` (relative)
    of its minimum are recomputed exactly, and ties among those go to the last (or first).
    """
    finite = np.isfinite(screen)
    if not finite.any():
        return len(screen) - 1 if last else 0
    m = float(screen[finite].min())
    near = np.flatnonzero(finite & (screen <= m + band * abs(m) + 1e-12))
    if len(near) == 1:  # no rival within the screen's error: it is the minimum
        return int(near[0])
    values = np.array([exact(int(k)) for k in near])
    best = values.min()
    hits = near[values == best]
    return int(hits[-1] if last else hits[0])


def edge_amax(hist: TensorHistogram, end_bin: int) -> float:
    """Right edge of bin ``end_bin - 1``, never above the exact max |x|."""
    return min(end_bin * hist.bin_width, hist.amax)
