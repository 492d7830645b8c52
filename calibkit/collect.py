"""Stream data through the FP32 model and reduce every activation into its histogram.

The model is run by ONNX Runtime with every calibration tensor exposed as an output; each
batch's activations are reduced into per-tensor histograms at once and dropped, so memory
is one run batch of activations whatever the dataset size.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import onnx

from calibkit.data import DataSource, FeedStats, run_batches
from calibkit.errors import CalibkitError
from calibkit.histogram import TensorHistogram
from calibkit.onnx_model import calibration_tensors, input_specs, with_outputs
from calibkit.providers import session

DEFAULT_RUN_BATCH = 16


@dataclass
class Collection:
    tensors: dict[str, TensorHistogram]
    stats: FeedStats
    seconds: float
    providers: list[str]


def collect(
    model: onnx.ModelProto,
    source: DataSource,
    run_batch: int = DEFAULT_RUN_BATCH,
    device: str = "auto",
    progress: Callable[[int], None] | None = None,
    model_name: str = "model",
) -> Collection:
    if run_batch < 1:
        raise CalibkitError(f"--batch-size must be >= 1, got {run_batch}")
    specs = input_specs(model)
    names = calibration_tensors(model)
    input_names = {s.name for s in specs}
    outputs = [n for n in names if n not in input_names]
    sess = session(with_outputs(model, outputs), device=device, where=model_name)
    hists = {n: TensorHistogram() for n in names}
    stats = FeedStats()
    start = time.perf_counter()
    non_float: set[str] = set()
    for feed in run_batches(source, specs, run_batch, stats):
        try:
            values = sess.run(outputs, feed)
        except Exception as exc:  # ORT raises its own exception types
            first = str(exc).strip().splitlines()[0][:300]
            raise CalibkitError(f"{model_name}: ONNX Runtime failed on a batch from {source.description}: {first}") from None
        for name, arr in zip(outputs, values):
            if arr.dtype.kind != "f":
                non_float.add(name)
                continue
            hists[name].update(arr)
        for name in input_names & hists.keys():
            hists[name].update(feed[name])
        if progress:
            progress(stats.samples)
    for name in non_float:
        del hists[name]
    return Collection(hists, stats, time.perf_counter() - start, list(sess.get_providers()))


