"""The options of ``calibkit quantize``, as one frozen group."""

from __future__ import annotations

from dataclasses import dataclass, field

from calibkit.errors import CalibkitError
from calibkit.recovery import RecoveryOptions

SMOOTHQUANT_ALPHAS = (0.25, 0.5, 0.75, 0.9)


@dataclass(frozen=True)
class QuantizeOptions:
    """``smoothquant``: "auto" (alpha tuned per tensor), "off", or an alpha in [0, 1];
    ``equalize``: cross-layer equalization of Conv chains; ``fallback``: keep layers in float
    when recovery alone misses the target; ``recovery_samples``: calibration samples the
    layer-wise recovery uses (the histograms use all); ``ablate``: also score bias correction
    alone, for the report (one more recovery pass); ``precision``: the Q/DQ number format every
    stage is scored and published in."""

    recovery: RecoveryOptions = field(default_factory=RecoveryOptions)
    smoothquant: str = "auto"
    equalize: bool = True
    fallback: bool = True
    recovery_samples: int = 16
    run_batch: int = 16
    ablate: bool = False
    precision: str = "int8"  # "fp8": FP8 E4M3FN Q/DQ; integer weight recovery is skipped
    shards: int | None = None  # is the calibration data enough? calibkit/checks/sufficiency.py
    shard_tolerance: float = 0.05

    def __post_init__(self) -> None:
        if self.precision not in ("int8", "fp8"):
            raise CalibkitError(f"--precision {self.precision!r} must be int8 or fp8")
        if self.smoothquant not in ("auto", "off"):
            try:
                a = float(self.smoothquant)
            except ValueError:
                a = -1.0
            if not 0.0 <= a <= 1.0:
                raise CalibkitError(f"--smoothquant {self.smoothquant!r} must be auto, off or an alpha in [0, 1]")
        if self.shards is not None and (
            isinstance(self.shards, bool) or not isinstance(self.shards, int) or self.shards < 2
        ):
            raise CalibkitError(f"--shards {self.shards!r}: give a number of parts >= 2 (4 is a good start)")
        if self.recovery_samples < 1:
            raise CalibkitError(f"--recovery-samples must be >= 1, got {self.recovery_samples}")
