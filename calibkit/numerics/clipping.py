"""Clip warnings: tensors whose threshold clips more than a set fraction of their values.

A threshold far below max |x| can be right (a long sparse tail) or a degenerate pick (entropy
on a Sigmoid output whose values all sit high in the range clips nearly all of them). Either
way it is worth saying, per tensor, before the scales are used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from calibkit.errors import CalibkitError
from calibkit.numerics.formats import INT8

DEFAULT_WARN_CLIP = 0.001  # 0.1% of a tensor's values
SHOWN = 20  # warnings printed in full; the rest are counted (all are in scales.json)


def saturated_fraction(hist, amax: float) -> float:
    """Fraction of ``hist``'s values that saturate INT8 under ``amax``: |x| past the top
    level's rounding interval, ``amax * 127.5 / 127`` (values between amax and that round to
    127 with or without clipping), to the histogram's bin resolution."""
    return hist.clipped_fraction(amax * ((INT8.qmax + 0.5) / INT8.qmax))


def check_limit(limit: Any, option: str = "--warn-clip") -> float:
    if (
        isinstance(limit, bool)
        or not isinstance(limit, (int, float))
        or not (math.isfinite(limit) and 0.0 <= limit <= 1.0)
    ):
        raise CalibkitError(
            f"{option} {limit!r}: give a fraction of a tensor's values in [0, 1], e.g. 0.001 for 0.1% (1 turns the warnings off)"
        )
    return float(limit)


def _g(x: float | None) -> str:
    return "?" if x is None else f"{x:.5g}"


@dataclass(frozen=True)
class ClipWarning:
    tensor: str
    method: str  # the spec that chose the threshold (auto: "auto (percentile:99.9)")
    clipped: float
    amax: float
    absmax: float | None  # None: not recorded (a hand-made scales.json)
    limit: float
    auto: bool = False
    criterion: str | None = None  # `calibkit quantize`'s reason for this amax (scales.json "criterion")

    def message(self, in_compare: bool = False) -> str:
        """``in_compare``: said inside ``calibkit compare``, whose table already scores the methods."""
        if in_compare:
            advice = "the candidates' task scores above say whether it costs accuracy"
        elif self.criterion:
            advice = (
                f"`calibkit quantize` kept it ({self.criterion}) because the search set scored better with it; "
                "check held-out accuracy with `calibkit validate`"
            )
        elif self.auto:
            advice = "auto chose it as the least expected INT8 error; check the accuracy with `calibkit compare` or keep the tensor's consumers in FP16"
        else:
            advice = "try --method percentile:99.99 or --method auto, and compare them with `calibkit compare`"
        return (
            f"tensor {self.tensor!r}: {self.method} clips {self.clipped:.4%} of its values (amax {self.amax:.5g} vs max |x| {_g(self.absmax)}; "
            f"--warn-clip {self.limit:g}); {advice}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "tensor": self.tensor,
            "method": self.method,
            "clipped": self.clipped,
            "amax": self.amax,
            "absmax": self.absmax,
        }


def warnings(table, limit: float = DEFAULT_WARN_CLIP) -> list[ClipWarning]:
    """Every tensor of ``table`` (a ScaleTable) clipping more than ``limit``, worst first."""
    from calibkit import methods

    limit = check_limit(limit)
    try:
        spec = methods.spec_of(table.method, methods.make_config(table.method, **table.params))
    except CalibkitError:  # a scales.json from a method this calibkit does not know
        spec = table.method
    out = []
    for name, t in table.tensors.items():
        c = float(t.get("clipped") or 0.0)
        if c > limit:
            criterion = t.get("criterion") if isinstance(t.get("criterion"), str) else None
            auto = table.method == "auto" and isinstance(t.get("method"), str) and criterion is None
            label = f"auto ({t['method']})" if auto else (str(t.get("method")) if criterion else spec)
            absmax = t.get("absmax")
            absmax = (
                float(absmax)
                if isinstance(absmax, (int, float)) and not isinstance(absmax, bool) and math.isfinite(absmax)
                else None
            )
            out.append(ClipWarning(name, label, c, float(t["amax"]), absmax, limit, auto, criterion))
    out.sort(key=lambda w: (-w.clipped, w.tensor))
    return out


def summary(ws: list[ClipWarning], limit: float) -> dict[str, Any]:
    """What scales.json and results.json record: the limit and each tensor's clipped fraction."""
    return {"limit": limit, "tensors": {w.tensor: w.clipped for w in ws}}
