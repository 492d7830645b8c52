"""One streamed pass over the validation data through the reference and every candidate.

Each batch is loaded once, run through ONNX Runtime FP32 (the reference) and through each
candidate; outputs and, for INT8 candidates, every quantized activation are compared at
once and reduced into fixed-size accumulators (metrics.py), so memory does not grow with the
validation set. Timed runs use plain sessions; activations come from separate sessions.
"""

from __future__ import annotations

import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from calibkit.data import FeedStats, Preprocess, open_source, run_batches
from calibkit.data.options import FeedOptions
from calibkit.data.script import load_function
from calibkit.data.usercode import HardExit, no_hard_exit
from calibkit.errors import CalibkitError
from calibkit.graph.model import input_specs
from calibkit.validate.backends import Candidate, reference
from calibkit.validate.metrics import Agreement, Latency, OutputMetrics

VALIDATION_BATCH = 32


@dataclass
class CandidateResult:
    label: str
    backend: str
    note: str
    method: str | None
    outputs: dict[str, OutputMetrics] = field(default_factory=dict)
    layers: dict[str, tuple[Agreement, Agreement]] = field(default_factory=dict)  # (accumulated, local)
    latency: Latency = field(default_factory=Latency)
    correct: float = 0.0
    model_path: Path | None = None
    layer_scales: dict[str, float] = field(default_factory=dict)
    per_sample: list[np.ndarray] = field(default_factory=list)  # task score of each sample, per batch

    def add_scores(self, s: np.ndarray) -> None:
        self.per_sample.append(np.asarray(s, dtype=np.float64).reshape(-1))
        self.correct += float(self.per_sample[-1].sum())

    @property
    def scores(self) -> np.ndarray | None:
        return np.concatenate(self.per_sample) if self.per_sample else None


@dataclass
class Evaluation:
    reference: CandidateResult
    candidates: list[CandidateResult]
    samples: int
    data_fingerprint: str
    data_description: str
    task_metric: str | None
    seconds: float
    classes: int | None = None  # class-score width when accuracy is top-1 vs labels
    feed: dict = field(default_factory=dict)  # how the data was cut: batch_axes, rebatch, max_samples, limited


def _fp32_names(model: onnx.ModelProto, tensors: set[str]) -> dict[str, str]:
    """Q/DQ-model tensor -> the FP32 model's tensor holding the same values.

    ORT renames a quantized graph output ``y`` to ``y_QuantizeLinear_Input``; other
    activations keep their names.
    """
    known = {o for n in model.graph.node for o in n.output} | {i.name for i in model.graph.input}
    out = {}
    for t in tensors:
        base = t[: -len("_QuantizeLinear_Input")] if t.endswith("_QuantizeLinear_Input") else t
        if base in known:
            out[t] = base
    return out


def _labels(path: str | None):
    if path is None:
        return None
    p = Path(path)
    if not p.is_file():
        from calibkit.graph.model import not_a_file

        raise CalibkitError(f"labels {p} {not_a_file(p)}; --labels takes an .npy file of class ids")
    try:
        lab = np.load(p, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:  # PK... bytes: numpy tries a zip
        raise CalibkitError(f"labels {p} is not a readable .npy array ({exc})") from None
    if not isinstance(lab, np.ndarray):  # an .npz archive
        lab.close()
        raise CalibkitError(f"labels {p} is an .npz archive; --labels needs one .npy array of class ids, shape [N]")
    if lab.ndim == 2 and lab.shape[1] == 1:
        lab = lab.reshape(-1)
    if lab.ndim != 1 or lab.dtype.kind not in "iub":
        raise CalibkitError(
            f"labels {p} is {lab.dtype}{list(lab.shape)}; --labels needs one integer class id per sample, shape [N] (use --metric for other targets)"
        )
    return lab


def check_class_ids(batch_labels: np.ndarray, scores: np.ndarray, labels) -> np.ndarray:
    """``batch_labels`` as class ids of the class-score output ``scores`` [N, C]; an id outside
    0..C-1 can never match an argmax, so it is an error, not a silent miss."""
    ids = np.asarray(batch_labels).reshape(-1)
    c = scores.shape[1]
    bad = np.flatnonzero((ids < 0) | (ids >= c))
    if bad.size:
        raise CalibkitError(
            f"labels {labels}: class ids lie outside 0..{c - 1} ({bad.size} of the {ids.size} in the first batch that has "
            f"any; first: {int(ids[bad[0]])}), but the class-score "
            f"output has {c} classes; are these the labels of this model and data (or should --metric score them)?"
        )
    return ids


def _class_output(names: list[str], ref: list[np.ndarray]) -> int:
    for i, a in enumerate(ref):
        if a.ndim == 2 and a.shape[1] >= 2:
            return i
    raise CalibkitError(
        f"--labels needs a class-score output [N, classes]; outputs are {', '.join(names)} — use --metric file.py:fn instead"
    )


def evaluate(
    model: onnx.ModelProto,
    data: Any,
    candidates: list[Candidate],
    preprocess: Preprocess | None = None,
    labels: str | None = None,
    metric: str | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    progress: Callable[[int], None] | None = None,
    on_source: Callable[[Any], None] | None = None,
    feed: FeedOptions | None = None,
    reference_model: onnx.ModelProto | None = None,
) -> Evaluation:
    """``feed``: how the data is cut, as for ``calibrate`` (inputs not ``[N, ...]``, feeds run as
    given, a stop after that many samples); a batch's sample count is the feed's.
    ``reference_model``: the FP32 model whose outputs the candidates are judged against (the
    original of a model whose weights ``quantize`` recovered); per-layer errors stay against
    ``model``'s own FP32 tensors, since recovery may rescale activations."""
    feed_opts = FeedOptions.of(feed)
    max_samples = feed_opts.max_samples
    t0 = time.perf_counter()
    specs = input_specs(model, feed_opts.batch_axes)
    source = open_source(data, specs, preprocess)
    if on_source:
        on_source(source)
    fp32_of = _fp32_names(model, {t for c in candidates for t in c.layers})
    input_names = {s.name for s in specs}
    layer_tensors = sorted(set(fp32_of.values()) - input_names)  # inputs come from the feed
    ref, ref_layers = reference(model, device, layer_tensors)
    if reference_model is not None:
        ref = reference(reference_model, device)[0]
    out_names = ref.output_names
    lab = _labels(labels)
    n_known = source.num_samples()
    if (
        lab is not None
        and n_known is not None
        and len(lab) != n_known
        and (max_samples is None or len(lab) < min(n_known, max_samples))
    ):
        raise CalibkitError(
            f"labels {labels} have {len(lab)} entries but {source.description} has {n_known} samples; they must match one to one"
        )
    metric_fn = load_function(metric, default="metric")[1] if metric else None
    ref_res = CandidateResult(ref.label, ref.backend, ref.note, None)
    results = [
        CandidateResult(
            c.label,
            c.backend,
            c.note,
            c.method,
            model_path=c.model_path,
            layer_scales={fp32_of[t]: s for t, (_, s) in c.layers.items() if t in fp32_of},
        )
        for c in candidates
    ]
    stats = FeedStats()
    offset = 0
    cls_index = None
    for feed in run_batches(source, specs, batch_size or VALIDATION_BATCH, stats, feed_opts):
        n = feed.samples  # not len() of an input: a state [2, N, H] or a 0-d scalar may come first
        t = time.perf_counter()
        ref_out = ref.run(feed)
        ref_out_shapes = [o.shape for o in ref_out]
        ref_res.latency.add(time.perf_counter() - t, n)
        batch_labels = None
        if lab is not None:
            if offset + n > len(lab):
                raise CalibkitError(
                    f"labels {labels} have {len(lab)} entries but the data has more samples; they must match one to one"
                )
            batch_labels = np.asarray(lab[offset : offset + n])
            if metric_fn is None:  # labels alone: top-1 accuracy on the class-score output
                if cls_index is None:
                    cls_index = _class_output(out_names, ref_out)
                ref_res.add_scores(
                    ref_out[cls_index].argmax(1) == check_class_ids(batch_labels, ref_out[cls_index], labels)
                )
        if metric_fn is not None:
            ref_res.add_scores(_score(metric_fn, out_names, ref_out, batch_labels, n, metric))
        ref_layer_vals = dict(zip(layer_tensors, ref_layers.run(layer_tensors, feed))) if ref_layers else {}
        ref_layer_vals.update(feed)
        for cand, res in zip(candidates, results):
            t = time.perf_counter()
            out = cand.run(feed)
            res.latency.add(time.perf_counter() - t, n)
            for name, r, c in zip(out_names, ref_out, out):
                if r.shape != c.shape:
                    raise CalibkitError(
                        f"{cand.label}: output {name!r} has shape {c.shape} but the FP32 reference has {r.shape}; the candidate is not the same model"
                    )
                res.outputs.setdefault(name, OutputMetrics()).add(r, c)
            if lab is not None and metric_fn is None:
                res.add_scores(np.nan_to_num(out[cls_index], nan=-np.inf).argmax(1) == batch_labels.reshape(-1))
            if metric_fn is not None:
                res.add_scores(_score(metric_fn, out_names, out, batch_labels, n, metric))
            if cand.layers:
                for tensor, (before, dq) in cand.run_layers(feed).items():
                    if tensor not in fp32_of:
                        continue
                    acc, loc = res.layers.setdefault(fp32_of[tensor], (Agreement(), Agreement()))
                    acc.add(ref_layer_vals[fp32_of[tensor]], dq)
                    loc.add(before, dq)
        offset += n
        if progress:
            progress(offset)
    for cand, res in zip(candidates, results):
        res.note = cand.note  # a TensorRT candidate builds on its first batch and adds its layer report then
    if (
        lab is not None and offset != len(lab) and not (stats.limited and offset < len(lab))
    ):  # --max-samples: the first labels
        raise CalibkitError(
            f"labels {labels} have {len(lab)} entries but the data has {offset} samples; they must match one to one"
        )
    task = f"metric {metric}" if metric_fn else ("top-1 accuracy vs labels" if lab is not None else None)
    classes = int(ref_out_shapes[cls_index][1]) if cls_index is not None and metric_fn is None else None
    feed_info = {
        "batch_axes": {s.name: s.axis for s in specs},
        "rebatch": feed_opts.rebatch,
        "max_samples": max_samples,
        "limited": stats.limited,
    }
    fingerprint = source.fingerprint() if not stats.limited else None
    return Evaluation(
        ref_res,
        results,
        offset,
        fingerprint or "streamed:" + stats.streamed_fingerprint(),
        source.description,
        task,
        time.perf_counter() - t0,
        classes,
        feed_info,
    )


def _score(fn, names, outputs, labels, n, where) -> np.ndarray:
    import os

    given = {k: np.array(v, copy=True) for k, v in zip(names, outputs)}  # the metric may not alter the outputs
    cwd = os.getcwd()
    try:
        try:
            with no_hard_exit(f"metric {where}"):
                got = fn(given, labels)
        finally:
            now = os.getcwd()
            if now != cwd:  # every relative path of the run (data, outputs) would move with it
                os.chdir(cwd)
        if now != cwd:
            raise CalibkitError(
                f"metric {where} changed the working directory to {now}; a metric must not chdir "
                "(relative data and output paths would move): open files by absolute path instead"
            )
        if got is None:
            raise CalibkitError(f"metric {where} returned None; return one score per sample ({n})")
        if np.iscomplexobj(got):
            raise CalibkitError(f"metric {where} returned complex scores; return one real score per sample ({n})")
        s = np.asarray(got, dtype=np.float64).reshape(-1)
    except CalibkitError:
        raise
    except (SystemExit, HardExit) as exc:
        call = "os._exit" if isinstance(exc, HardExit) else "sys.exit"
        raise CalibkitError(
            f"metric {where} called {call}({exc.code!r}); a metric returns one score per sample, it must not exit"
        ) from None
    except Exception as exc:
        raise CalibkitError(f"metric {where} raised {type(exc).__name__}: {exc}") from None
    if s.size != n:
        raise CalibkitError(f"metric {where} must return one score per sample ({n}), got {s.size}")
    bad = np.flatnonzero(~np.isfinite(s))
    if not bad.size and not np.isfinite(float(np.abs(s).sum()) * 100.0):
        raise CalibkitError(
            f"metric {where} returned scores too large to average (largest |score| {float(np.abs(s).max()):.3g}); "
            "return a score per sample on a small scale (1/0 for a hit/miss, or a value in [0, 1])"
        )
    if bad.size:
        raise CalibkitError(
            f"metric {where} returned a NaN/inf score for {bad.size} of {n} samples (first: sample {int(bad[0])} of its batch); "
            "return a finite score per sample (count a NaN output as a miss)"
        )
    return s
