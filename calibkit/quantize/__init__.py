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

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from calibkit.data import Preprocess
from calibkit.data.options import FeedOptions
from calibkit.errors import ThresholdFailed
from calibkit.outputs.publish import Transaction
from calibkit.outputs.scratch import scratch
from calibkit.quantize.options import SMOOTHQUANT_ALPHAS, QuantizeOptions
from calibkit.sensitivity.search import Target

__all__ = ["SMOOTHQUANT_ALPHAS", "QuantizeOptions", "QuantizeResult", "quantize"]


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
        stem = Path(model).stem
        tx.refuse_others_members(  # before the work, not after it
            [f"{stem}.qdq.onnx", f"{stem}.recovered.onnx", f"{stem}.recovered.cache", f"{stem}.recovered.tensors.json"]
            + ["scales.json", "histograms.npz", "keep-fp16.txt", "exclude-nodes.txt", "quantize.json", "report.html"]
            + ["sufficiency.json"]
        )
        with scratch("quantize") as tmp:
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
    if (doc.get("sufficiency") or {}).get("enough") is False:  # --shards: the data is the doubt
        err = ThresholdFailed(
            f"the target holds, but the calibration data is not enough ({doc['sufficiency']['verdict']}); "
            f"the result is written; see {paths['sufficiency']}"
        )
        err.result = res
        raise err
    return res


def _options_doc(o: QuantizeOptions) -> dict:
    d = asdict(o)
    d["recovery"] = asdict(o.recovery)
    return d
