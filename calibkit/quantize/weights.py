"""Weight recovery for ``export-qdq``: bias correction and adaptive rounding applied to a
model under scales that are already chosen (they keep the activation scales, so they fit an
export; equalization and SmoothQuant change activations and need ``calibkit quantize``)."""

from __future__ import annotations

from pathlib import Path

from calibkit.errors import CalibkitError
from calibkit.recovery import RecoveryOptions, recover_weights

RUN_BATCH = 16  # as quantize: the sampled statistics depend on the batching


def recovered(model: str | Path, amax: dict[str, float], meta: dict, data, opts: RecoveryOptions, samples: int):
    """(model with recovered weights, record) for ``export-qdq --rounding/--bias-correction``.
    ``meta``: the scales' meta (its preprocessing is applied to image data)."""
    from calibkit.data import resolve_preprocess
    from calibkit.data.options import FeedOptions
    from calibkit.quantize.pipeline import first_samples, model_proto, read_feeds

    if samples < 1:
        raise CalibkitError(f"--recovery-samples must be >= 1, got {samples}")
    preprocess = resolve_preprocess(None, meta.get("preprocess"), data, False, "the scales")
    proto = model_proto(Path(model))
    feeds = first_samples(read_feeds(proto, data, preprocess, FeedOptions.of(None), RUN_BATCH), samples)
    out, doc = recover_weights(proto, amax, feeds, opts)
    return out, doc


def summary(doc: dict) -> str:
    layers = doc.get("layers", {})
    adaptive = sum(1 for r in layers.values() if r.get("rounding") == "adaptive")
    corrected = sum(1 for r in layers.values() if r.get("bias") == "corrected")
    skipped = len(doc.get("skipped", {}))
    nearest = sum(1 for r in layers.values() if r.get("rounding") != "adaptive")
    return (
        f"weights recovered on {len(layers)} layers ({adaptive} adaptively rounded"
        f"{f', {nearest} kept nearest rounding (no better)' if nearest else ''}, {corrected} bias-corrected"
        f"{f'; {skipped} not covered' if skipped else ''})"
    )
