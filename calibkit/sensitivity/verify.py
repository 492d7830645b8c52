"""The fallback's verdict: export the Q/DQ model with the chosen layers excluded and validate
it in full, next to the all-INT8 model, through the same engine as ``calibkit validate``.

The switchable session agrees with the exported model up to float rounding; a task metric
that thresholds (exact sequence match, top-1 near a tie) can still flip a sample. If the
exported model misses the target, the next most sensitive layer is kept too and the export is
validated again (``MAX_EXTRA`` times at most); every attempt is a step in the report.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from calibkit.sensitivity.exclusions import regex

MAX_EXTRA = 3


@dataclass
class Verified:
    kept: list[int]
    nodes: list[str]
    evaluation: object  # validate.engine.Evaluation
    doc: dict  # validate results document (candidates: FP32, before, after)
    after: object  # the candidate of the exported fallback model (model_path: its Q/DQ file)


def verify(
    s,
    table,
    kept: list[int],
    order: list[int],
    met: bool,
    gates: dict,
    run,
    model_info: dict,
    scales: str,
    tmp: Path,
    device: str,
    steps: list[dict],
) -> Verified:
    """``run(candidates)`` -> Evaluation over the validation data."""
    from calibkit.validate import backends as B
    from calibkit.validate import results as R

    names = [o.name for o in s.model.graph.output]
    (tmp / "all").mkdir()
    before = B.make("ort-int8", s.model, names, tmp / "all", table.amax(), device=device, method=table.method)
    before.label = "INT8, every layer"
    gate_obj = R.Gates(gates.get("min_cosine"), gates.get("max_accuracy_drop"))
    spare = [u for u in order if u not in kept]
    for attempt in range(MAX_EXTRA + 1):
        nodes = [n for u in kept for n in s.sw.units[u].nodes]
        d = tmp / f"try{attempt}"
        d.mkdir()
        after = B.make(
            "ort-int8", s.model, names, d, table.amax(), device=device, method=table.method, exclude_nodes=regex(nodes)
        )
        after.label = f"INT8 + fallback (layers kept in float: {len(kept)})"
        ev = run([before, after])
        doc = R.document(ev, s.model, model_info, gate_obj, device, {"scales": scales})
        doc["unavailable"] = []
        a = next(c for c in doc["candidates"] if c["label"] == after.label)
        doc["pass"], doc["best"] = bool(a["pass"]), after.label
        steps.append(
            {
                "step": "full validation of the exported model",
                "kept": len(kept),
                "meets": a["pass"],
                "min_cosine": _worst(a),
                "task": a.get("accuracy"),
            }
        )
        if a["pass"] or not met or not spare or attempt == MAX_EXTRA:
            break
        kept = kept + [spare.pop(0)]
    return Verified(kept, nodes, ev, doc, after)


def _worst(c: dict):
    vals = [o.get("cosine") for o in (c.get("outputs") or {}).values()]
    return None if not vals or any(not isinstance(v, (int, float)) for v in vals) else min(vals)
