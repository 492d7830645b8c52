"""``calibkit quantize``: the best INT8 model calibkit can make, in one command.

calibrate -> cross-layer equalization / SmoothQuant (float transforms, then calibrate again)
-> thresholds by the consumer's error -> bias correction and adaptive weight rounding, layer
by layer in topological order -> fallback to float only for what recovery could not fix ->
export, verified by a full validation on the search set -> one report of what each step
bought. The published set: ``<stem>.qdq.onnx`` (TensorRT 11 / ORT), ``<stem>.recovered.onnx``
(the FP32 model carrying the corrected weights, which a TensorRT 10 build must use with the
cache), ``<stem>.cache``, ``<stem>.tensors.json``, ``scales.json``, ``histograms.npz``,
``keep-fp16.txt``, ``exclude-nodes.txt``, ``quantize.json``, ``report.html`` and
``report.results.json``. Exit 3 (ThresholdFailed) when the target does not hold; the best
result is still written.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from calibkit.data import Preprocess
from calibkit.data.options import FeedOptions
from calibkit.errors import CalibkitError, ThresholdFailed
from calibkit.outputs.publish import Transaction
from calibkit.recovery import RecoveryOptions
from calibkit.sensitivity.search import Target

__all__ = ["QuantizeOptions", "QuantizeResult", "quantize"]

SMOOTHQUANT_ALPHAS = (0.25, 0.5, 0.75, 0.9)


@dataclass(frozen=True)
class QuantizeOptions:
    """``smoothquant``: "auto" (alpha tuned per tensor), "off", or an alpha in [0, 1];
    ``equalize``: cross-layer equalization of Conv chains; ``fallback``: keep layers in float
    when recovery alone misses the target; ``recovery_samples``: calibration samples the
    layer-wise recovery uses (the histograms use all); ``ablate``: also score bias correction
    alone, for the report (one more recovery pass)."""

    recovery: RecoveryOptions = field(default_factory=RecoveryOptions)
    smoothquant: str = "auto"
    equalize: bool = True
    fallback: bool = True
    recovery_samples: int = 16
    run_batch: int = 16
    ablate: bool = False

    def __post_init__(self) -> None:
        if self.smoothquant not in ("auto", "off"):
            try:
                a = float(self.smoothquant)
            except ValueError:
                a = -1.0
            if not 0.0 <= a <= 1.0:
                raise CalibkitError(f"--smoothquant {self.smoothquant!r} must be auto, off or an alpha in [0, 1]")
        if self.recovery_samples < 1:
            raise CalibkitError(f"--recovery-samples must be >= 1, got {self.recovery_samples}")


@dataclass
class QuantizeResult:
    doc: dict
    outputs: dict[str, Path]


def quantize(
    model: str | Path,
    data: Any,
    val: Any,
    output_dir: str | Path,
    labels: str | None = None,
    metric: str | None = None,
    target: Target = Target(),
    options: QuantizeOptions = QuantizeOptions(),
    preprocess: Preprocess | None = None,
    feed: FeedOptions | None = None,
    workers: int | None = None,
    ray: str | None = None,
    device: str = "cpu",
    progress: Callable[[str], None] | None = None,
) -> QuantizeResult:
    """Quantize ``model`` with calibration ``data``, judging every step on ``val`` (the search
    set: report held-out numbers from another split). See the module docstring."""
    from calibkit.quantize.pipeline import Pipeline

    t0 = time.perf_counter()
    say = progress or (lambda msg: None)
    out = Path(output_dir)
    with Transaction(out, "quantize", command="quantize") as tx:
        with tempfile.TemporaryDirectory(prefix="calibkit-quantize-") as tmp:
            p = Pipeline(
                Path(model), data, val, labels, metric, target, options, preprocess, feed, device, Path(tmp), say
            )
            doc = p.run(workers, ray)
            doc["seconds"] = round(time.perf_counter() - t0, 3)
            doc["options"] = _options_doc(options)
            paths = p.publish(tx, doc)
        tx.commit()
    res = QuantizeResult(doc, paths)
    if not doc["pass"]:
        err = ThresholdFailed(doc["verdict"] + f"; the best result reached is written; see {paths['report']}")
        err.result = res
        raise err
    return res


def _options_doc(o: QuantizeOptions) -> dict:
    d = asdict(o)
    d["recovery"] = asdict(o.recovery)
    return d


def first_samples(feeds: list[dict[str, np.ndarray]], n: int) -> list[dict[str, np.ndarray]]:
    """The batches holding the first ``n`` samples (whole batches)."""
    out, seen = [], 0
    for f in feeds:
        if seen >= n:
            break
        out.append(f)
        seen += int(getattr(f, "samples", 0) or next(iter(f.values())).shape[0])
    return out


def model_proto(path: Path) -> onnx.ModelProto:
    from calibkit.graph import forms
    from calibkit.graph.model import load
    from calibkit.qdq.export import name_nodes

    m, _ = forms.prepare(load(path))
    return name_nodes(m)
