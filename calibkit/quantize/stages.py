"""Scoring one INT8 configuration on the search set: export it to Q/DQ, run it as written,
compare with the cached FP32 reference (sensitivity.evaluation's ValSet) per output and task.
"""

from __future__ import annotations

import time
from pathlib import Path

import onnx

from calibkit.outputs.scratch import scratch
from calibkit.sensitivity.evaluation import ValSet, score_outputs


def evaluate(
    model: onnx.ModelProto,
    amax: dict[str, float],
    vs: ValSet,
    exclude_nodes: str | None = None,
    device: str = "cpu",
    precision: str = "int8",
) -> dict:
    """{"cosine": {output: c}, "min_cosine", "task"?, "seconds"} of ``model`` in INT8 with ``amax``."""
    from calibkit.qdq.export import export_qdq
    from calibkit.sessions import session

    t0 = time.perf_counter()
    with scratch("stage") as tmp:
        path = export_qdq(model, amax, Path(tmp) / "stage.qdq.onnx", exclude_nodes=exclude_nodes, precision=precision)
        sess = session(onnx.load(str(path)), device=device, where="the Q/DQ model", exact_qdq=True)
    result = score_outputs(vs, lambda feed: sess.run(vs.output_names, feed))
    result["seconds"] = round(time.perf_counter() - t0, 3)
    return result


def int8_fraction(model: onnx.ModelProto, amax: dict[str, float], excluded: list[str]) -> tuple[int, int]:
    """(compute layers in INT8, compute layers) under the trt placement."""
    from calibkit.qdq.placement import COMPUTE_OPS

    layers = [n for n in model.graph.node if n.op_type in COMPUTE_OPS and n.input and n.input[0] in amax]
    gone = set(excluded)
    return sum(1 for n in layers if n.name not in gone), len(layers)
