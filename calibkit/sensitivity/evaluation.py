"""The validation set, its FP32 reference, and one evaluation of a configuration.

``ValSet`` holds the validation feeds in memory (sensitivity runs use a validation subset, not
the training set) with the FP32 outputs and per-sample task scores computed once and cached on
disk under a fingerprint of the model, the data and the feed options, so ``sensitivity`` and
``fallback`` (and a re-run) never recompute them. Workers get the switchable model, the feeds
and the reference once (``setup``), then each ``task`` is one pass with a set of layers kept
in float. Sessions run single-threaded so results do not depend on the number of workers.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from calibkit.data import FeedStats, Preprocess, open_source, run_batches
from calibkit.data.options import FeedOptions
from calibkit.data.script import load_function
from calibkit.errors import CalibkitError
from calibkit.graph.model import input_specs
from calibkit.validate.engine import VALIDATION_BATCH, _class_output, _labels, _score, check_class_ids
from calibkit.validate.metrics import Agreement

REF_FORMAT = 1


def cache_dir() -> Path:
    root = os.environ.get("CALIBKIT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "calibkit")
    return Path(root)


@dataclass
class ValSet:
    feeds: list[dict[str, np.ndarray]]
    samples: list[int]
    reference: list[list[np.ndarray]]  # per batch, per output
    ref_scores: np.ndarray | None  # per sample
    labels: np.ndarray | None
    metric: str | None
    output_names: list[str]
    class_index: int | None
    fingerprint: str
    description: str

    @property
    def n(self) -> int:
        return int(sum(self.samples))

    @property
    def ref_task(self) -> float | None:
        """FP32's task score (percent), when the set has a task."""
        s = self.ref_scores
        return None if s is None else 100.0 * float(s.sum()) / len(s)

    @property
    def task(self) -> str | None:
        return (
            f"metric {self.metric}"
            if self.metric
            else ("top-1 accuracy vs labels" if self.labels is not None else None)
        )


def load_valset(
    model: onnx.ModelProto,
    model_fp: str,
    data,
    preprocess: Preprocess | None,
    labels: str | None,
    metric: str | None,
    feed: FeedOptions | None = None,
    batch_size: int | None = None,
    device: str = "cpu",
) -> tuple[ValSet, bool]:
    """The validation set with its FP32 reference; (valset, whether the reference came from the cache)."""
    from calibkit.validate.backends import session

    feed = FeedOptions.of(feed)
    specs = input_specs(model, feed.batch_axes)
    source = open_source(data, specs, preprocess)
    stats = FeedStats()
    feeds, counts = [], []
    for b in run_batches(source, specs, batch_size or VALIDATION_BATCH, stats, feed):
        feeds.append({k: np.ascontiguousarray(v) for k, v in b.items()})
        counts.append(int(b.samples))
    lab = _labels(labels)
    if lab is not None and stats.limited:
        lab = lab[: sum(counts)]  # --max-samples: the first N labels, as validate uses them
    if lab is not None and len(lab) != sum(counts):
        raise CalibkitError(
            f"labels {labels} have {len(lab)} entries but {source.description} has {sum(counts)} samples; they must match one to one"
        )
    data_fp = source.fingerprint() or "streamed:" + stats.streamed_fingerprint()
    metric_id = _metric_id(metric)
    key = hashlib.sha256(
        json.dumps([REF_FORMAT, model_fp, data_fp, counts, metric_id, _labels_id(lab)], sort_keys=True).encode()
    ).hexdigest()[:24]
    out_names = [o.name for o in model.graph.output]
    path = cache_dir() / "reference" / f"{key}.npz"
    cached = _read_ref(path, len(feeds), len(out_names))
    if cached is None:
        sess = session(model, device=device, where="the FP32 model")
        ref = [sess.run(out_names, f) for f in feeds]
        _check_finite(ref, out_names, source.description)
        fn = load_function(metric, default="metric")[1] if metric else None
        scores = _task_scores(ref, out_names, lab, fn, metric, counts)
        _write_ref(path, ref, scores)
    else:
        ref, scores = cached
    cls = _class_output(out_names, ref[0]) if lab is not None and metric is None else None
    if cls is not None:
        check_class_ids(lab, ref[0][cls], labels)
    vs = ValSet(
        feeds,
        counts,
        ref,
        scores,
        None if lab is None else np.asarray(lab),
        metric,
        out_names,
        cls,
        key,
        source.description,
    )
    return vs, cached is not None


def _check_finite(ref: list[list[np.ndarray]], names: list[str], where: str) -> None:
    for j, name in enumerate(names):
        bad = sum(
            int(np.count_nonzero(~np.isfinite(outs[j]))) for outs in ref if np.issubdtype(outs[j].dtype, np.floating)
        )
        if bad:
            raise CalibkitError(
                f"the FP32 model's output {name!r} holds {bad} NaN/inf values on {where}: no layer can be judged against it; "
                "check the data (NaN/inf in an input?) and its preprocessing"
            )


def _metric_id(metric: str | None) -> str | None:
    if not metric:
        return None
    path = Path(metric.partition(".py:")[0] + ".py") if ".py:" in metric else Path(metric)
    digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "missing"
    return f"{metric}:{digest}"


def _labels_id(lab) -> str | None:
    return None if lab is None else hashlib.sha256(np.ascontiguousarray(lab).tobytes()).hexdigest()


def _task_scores(
    outs: list[list[np.ndarray]], names: list[str], lab, fn, metric: str | None, counts: list[int]
) -> np.ndarray | None:
    if lab is None and fn is None:
        return None
    cls = _class_output(names, outs[0]) if fn is None else None
    parts, start = [], 0
    for o, n in zip(outs, counts):
        batch_labels = None if lab is None else np.asarray(lab[start : start + n])
        if fn is None:
            parts.append((np.nan_to_num(o[cls], nan=-np.inf).argmax(1) == batch_labels.reshape(-1)).astype(np.float64))
        else:
            parts.append(_score(fn, names, o, batch_labels, n, metric))
        start += n
    return np.concatenate(parts)


def _read_ref(path: Path, batches: int, outputs: int):
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            ref = [[z[f"b{i}_o{j}"] for j in range(outputs)] for i in range(batches)]
            scores = z["scores"] if "scores" in z.files else None
            digest = bytes(z["digest"]).decode() if "digest" in z.files else None
    except Exception:  # BadZipFile, zlib.error, a torn member: not a cache entry
        return None  # a damaged cache entry is recomputed
    if digest != _ref_digest(ref, scores):
        return None  # edited, truncated or from an older calibkit: recomputed, never trusted
    return ref, scores


def _ref_digest(ref, scores) -> str:
    h = hashlib.sha256()
    for a in [x for outs in ref for x in outs] + ([] if scores is None else [scores]):
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _write_ref(path: Path, ref, scores) -> None:
    arrays = {f"b{i}_o{j}": a for i, outs in enumerate(ref) for j, a in enumerate(outs)}
    if scores is not None:
        arrays["scores"] = scores
    arrays["digest"] = np.frombuffer(_ref_digest(ref, scores).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(buf.getvalue())
        os.replace(tmp, path)
    except OSError:
        pass  # the cache is an optimisation: an unwritable cache dir only costs a recomputation


# ---- worker side -------------------------------------------------------------------------
_STATE: dict = {}


def payload(model: onnx.ModelProto, vs: ValSet, bases=None) -> bytes:
    """Everything a worker needs, serialised once (shipped once per worker); ``bases``: the
    on-disk base runs of downstream-only evaluation (calibkit.sensitivity.downstream), if any."""
    return pickle.dumps(
        {"model": model.SerializeToString(), "vs": vs, "bases": bases}, protocol=pickle.HIGHEST_PROTOCOL
    )


def setup(blob: bytes) -> None:
    from calibkit.sessions import session

    state = pickle.loads(blob)
    vs: ValSet = state["vs"]
    _STATE.clear()
    _STATE["vs"] = vs
    _STATE["sess"] = session(state["model"], device="cpu", threads=1, where="the switchable INT8 model", exact_qdq=True)
    _STATE["metric_fn"] = load_function(vs.metric, default="metric")[1] if vs.metric else None
    proto = onnx.load_from_string(state["model"])
    _STATE["n_switch"] = sum(1 for i in proto.graph.input if i.name.startswith("calibkit_int8_"))
    if state.get("bases") is not None:
        from calibkit.sensitivity.downstream import Runner

        _STATE["downstream"] = Runner(proto, _STATE["n_switch"], state["bases"])


def task(kept: tuple[int, ...]) -> dict:
    """Run the validation set with every unit quantized except ``kept``; returns the metrics."""
    from calibkit.sensitivity.switch import switch_name

    vs: ValSet = _STATE["vs"]
    sess = _STATE["sess"]
    keep = set(kept)
    switches = {switch_name(i): np.array(i not in keep) for i in range(_STATE["n_switch"])}
    ds = _STATE.get("downstream")
    plan = ds.plan(frozenset(keep)) if ds is not None else None
    if plan is None:
        return score_outputs(vs, lambda feed: sess.run(vs.output_names, {**feed, **switches}), _STATE["metric_fn"])
    batch = iter(range(len(vs.feeds)))
    return score_outputs(
        vs, lambda feed: ds.run(plan, next(batch), feed, switches, vs.output_names), _STATE["metric_fn"]
    )


def score_outputs(vs: ValSet, run: Callable[[dict], list[np.ndarray]], metric_fn=None) -> dict:
    """Cosine to the FP32 reference per output (and the worst), and the task score (percent)
    when the set has one, of a candidate ``run(feed) -> outputs`` over the validation set."""
    agree = [Agreement() for _ in vs.output_names]
    outs = []
    for feed, ref in zip(vs.feeds, vs.reference):
        out = run(feed)
        for a, r, c in zip(agree, ref, out):
            a.add(r, c)
        if vs.ref_scores is not None:
            outs.append(out)
    cos = {name: _num(a.cosine) for name, a in zip(vs.output_names, agree)}
    result = {"cosine": cos, "min_cosine": _min(cos.values())}
    if vs.ref_scores is not None:
        fn = metric_fn if metric_fn is not None or not vs.metric else load_function(vs.metric, default="metric")[1]
        scores = _task_scores(outs, vs.output_names, vs.labels, fn, vs.metric, vs.samples)
        result["task"] = _num(100.0 * float(scores.sum()) / len(scores))
    return result


def _num(v: float) -> float | None:
    return float(v) if v is not None and math.isfinite(v) else None  # None: NaN/inf, fails every target


def _min(values) -> float | None:
    vals = list(values)
    return None if not vals or any(v is None for v in vals) else min(vals)
