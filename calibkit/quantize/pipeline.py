"""The steps of ``calibkit quantize`` and what each one bought on the search set."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx

import calibkit.quantize.stages as ST
import calibkit.quantize.transforms as TF
from calibkit.calibration import calibrate
from calibkit.data import open_source, run_batches
from calibkit.data.feed import FeedStats
from calibkit.data.options import FeedOptions
from calibkit.errors import CalibkitError, ThresholdFailed
from calibkit.graph.model import fingerprint_file, input_specs
from calibkit.recovery import choose_thresholds, recover_weights
from calibkit.sensitivity.evaluation import load_valset
from calibkit.sensitivity.search import loss, meets


class Pipeline:
    def __init__(self, model_path, data, val, labels, metric, target, options, preprocess, feed, device, tmp, say):
        self.model_path, self.data, self.val = model_path, data, val
        self.labels, self.metric, self.target, self.o = labels, metric, target, options
        self.preprocess, self.feed, self.device, self.tmp, self.say = preprocess, FeedOptions.of(feed), device, tmp, say
        self.stages: list[dict] = []
        self.sufficiency = None  # --shards: calibkit/checks/sufficiency.py's report on the calibration data

    # -- helpers -------------------------------------------------------------------------
    def _feeds(self, model: onnx.ModelProto) -> list[dict[str, np.ndarray]]:
        return read_feeds(model, self.data, self.preprocess, self.feed, self.o.run_batch)

    def _calibrate(self, proto: onnx.ModelProto, name: str, shards: int | None = None):
        """Calibrate ``proto`` into the scratch folder; with ``shards``, in that many parts whose
        merge is the same histograms (calibkit/checks/sufficiency.py), the sufficiency report kept."""
        d = self.tmp / name
        d.mkdir()
        path = d / self.model_path.name
        onnx.save_model(proto, str(path))
        if shards is None:
            return path, calibrate(path, self.data, output_dir=d / "cal", preprocess=self.preprocess, feed=self.feed)
        from calibkit.checks.sufficiency import calibrate_shards

        res, self.sufficiency = calibrate_shards(
            path,
            self.data,
            shards,
            output_dir=d / "cal",
            tolerance=self.o.shard_tolerance,
            preprocess=self.preprocess,
            feed=self.feed,
        )
        word = "enough data" if self.sufficiency.enough else "NOT ENOUGH DATA"
        self.say(f"calibration data ({shards} parts): {word}: {self.sufficiency.verdict()}")
        return path, res

    def _stage(self, label: str, step: str, model, amax, excluded=(), note: str = "") -> dict:
        from calibkit.sensitivity.exclusions import regex

        r = ST.evaluate(
            model, amax, self.vs, regex(list(excluded)) if excluded else None, self.device, self.o.precision
        )
        q, total = ST.int8_fraction(model, amax, list(excluded))
        row = {"stage": label, "step": step, "int8_layers": q, "layers": total, **r}
        if note:
            row["note"] = note
        row["meets"] = meets(r, self.gates, self.vs.ref_task)
        self.stages.append(row)
        task = f", task {r['task']:.2f}%" if r.get("task") is not None else ""
        cos = "n/a (NaN)" if r["min_cosine"] is None else f"{r['min_cosine']:.6f}"
        self.say(f"{label}: worst cosine {cos}{task}, {q}/{total} layers {self.o.precision.upper()}")
        return row

    # -- the run ---------------------------------------------------------------------------
    def run(self, workers, ray) -> dict:
        o = self.o
        original = model_proto(self.model_path)
        self.vs, _ = load_valset(
            original, fingerprint_file(self.model_path), self.val, self.preprocess, self.labels, self.metric, self.feed
        )
        self.gates, self.default_target = self.target.applied(self.vs.task is not None)
        self.warnings = self._warnings()
        for w in self.warnings:
            self.say(f"warning: {w}")
        ref = {"cosine": 1.0}
        if self.vs.ref_task is not None:
            ref["task"] = self.vs.ref_task
        self.say("calibrating (histograms of every activation)")
        _, base = self._calibrate(original, "original", o.shards)
        self._stage("calibkit calibrate (entropy)", "baseline", original, base.table.amax())
        feeds = self._feeds(original)
        rec_feeds = first_samples(feeds, o.recovery_samples)

        self.say("thresholds by the consumer's error")
        thr = o.recovery  # the threshold criterion every later candidate is given
        amax, why = choose_thresholds(original, base.histograms, base.table.amax(), feeds, o.recovery, self.device)
        if o.recovery.thresholds != "method":
            label = (
                "+ thresholds by the consumer's error" if o.recovery.thresholds == "consumer" else "+ auto thresholds"
            )
            if not self._keep(self._stage(label, "thresholds", original, amax), "threshold choice"):
                amax, why = base.table.amax(), {}
                thr = replace(o.recovery, thresholds="method")  # later steps keep calibrate's thresholds too
        if o.recovery.thresholds == "consumer":
            # The consumer's error is a per-layer criterion; where the network's output disagrees
            # (MiniLM: 0.946 against entropy's 0.957 on the search set), each tensor's own least
            # INT8 error (calibkit's auto) is the other candidate the search set decides between.
            auto_opts = replace(o.recovery, thresholds="auto")
            a_amax, a_why = choose_thresholds(
                original, base.histograms, base.table.amax(), feeds, auto_opts, self.device
            )
            row = self._stage("+ auto thresholds (each tensor's own least error)", "thresholds_auto", original, a_amax)
            if self._keep(row, "auto thresholds"):
                amax, why, thr = a_amax, a_why, auto_opts

        model, hset = original, base.histograms
        transforms: dict = {"equalize": [], "smoothquant": [], "kept": []}
        steps = []
        if o.equalize:
            steps.append(("equalize", "cross-layer equalization", lambda m: TF.equalize(m)))
        if o.smoothquant != "off":
            steps.append(("smoothquant", "SmoothQuant", lambda m: TF.smoothquant(m, feeds, o)))
        for key, name, fn in steps:
            self.say(name)
            cand, recs = fn(model)
            transforms[key] = recs
            changed = [r for r in recs if key == "equalize" or r.get("alpha") is not None]
            if not changed:
                if key == "smoothquant":
                    from calibkit.recovery.smoothquant import ineligible

                    transforms["smoothquant_ineligible"] = why_not = ineligible(model)
                    if o.smoothquant != "auto":
                        reasons = (
                            "; ".join(f"{t}: {r}" for t, r in sorted(why_not.items())[:5])
                            or "no MatMul/Gemm reads an activation with a constant weight"
                        )
                        self.say(f"  --smoothquant {o.smoothquant} applied to no tensor ({reasons})")
                continue
            _, cal = self._calibrate(cand, key)
            c_amax, c_why = choose_thresholds(cand, cal.histograms, cal.table.amax(), feeds, thr, self.device)
            n = f"{len(changed)} pairs" if key == "equalize" else f"{len(changed)} tensors"
            if self._keep(self._stage(f"+ {name} ({n})", key, cand, c_amax), name):
                model, hset, amax, why = cand, cal.histograms, c_amax, c_why
                transforms["kept"].append(key)
        recovery: dict = {"layers": {}, "skipped": {}}
        weights = o.recovery.changes_weights and o.precision == "int8"
        if o.recovery.changes_weights and not weights:
            self.warnings.append(
                f"--precision {o.precision}: bias correction and weight rounding skipped (they fit INT8's integer grid); "
                "thresholds and the fallback's layer ranking are INT8's, every stage is scored in FP8"
            )
            self.say(f"warning: {self.warnings[-1]}")
        if weights:
            if o.ablate and o.recovery.bias_correction and o.recovery.rounding == "adaptive":
                self.say("bias correction alone (for the report)")
                bc, _ = recover_weights(model, amax, rec_feeds, replace(o.recovery, rounding="nearest"), self.device)
                row = self._stage("+ bias correction alone", "bias_correction", bc, amax)
                row.update(kept=False, note="for the report: bias correction without adaptive rounding")
            self.say(
                f"weight recovery ({o.recovery.rounding} rounding, bias correction {'on' if o.recovery.bias_correction else 'off'})"
            )
            cand, recovery = recover_weights(model, amax, rec_feeds, o.recovery, self.device, self._layer_progress)
            if not recovery["layers"]:
                recovery["kept"] = False
                self.say("  no layer could be recovered: " + "; ".join(sorted(set(recovery["skipped"].values()))))
        if weights and recovery["layers"]:
            label = "+ adaptive rounding" if o.recovery.rounding == "adaptive" else "+ bias correction"
            if o.recovery.rounding == "adaptive" and o.recovery.bias_correction:
                label += " and bias correction"
            if self._keep(self._stage(label, "recovery", cand, amax), "weight recovery"):
                model = cand
                recovery["kept"] = True
            else:
                recovery = {**recovery, "kept": False}
                if o.recovery.bias_correction and o.recovery.bias_terms == "full":
                    # the whole mean shift lost (MiniLM: a few tokens' clipped outliers make it):
                    # the other candidate corrects only what weight rounding shifts
                    self.say("weight recovery again, the bias corrected for weight rounding's shift only")
                    alt_opts = replace(o.recovery, bias_terms="weights")
                    alt, alt_doc = recover_weights(model, amax, rec_feeds, alt_opts, self.device, self._layer_progress)
                    row = self._stage(label + " (weight rounding's shift only)", "recovery_weights", alt, amax)
                    if alt_doc["layers"] and self._keep(row, "weight recovery (weight rounding's shift only)"):
                        model = alt
                        recovery = {**alt_doc, "kept": True, "bias_terms": "weights"}
        self.model, self.amax, self.hset, self.why = model, amax, hset, why
        self.excluded: list[str] = []
        self.fallback_doc = None
        if not self._kept()["meets"] and o.fallback:
            self._fallback(workers, ray)
        final = self._kept()
        doc = {
            "model": {"name": self.model_path.name, "fingerprint": fingerprint_file(self.model_path)},
            "target": self.gates,
            "default_target": self.default_target,
            "reference": ref,
            "search_set": self.vs.description,
            "samples": self.vs.n,
            "stages": self.stages,
            "transforms": transforms,
            "thresholds": why,
            "recovery": recovery,
            "fallback": self.fallback_doc,
            "kept_in_float": self.excluded,
            "warnings": self.warnings,
            "int8_layers": final["int8_layers"],
            "layers": final["layers"],
        }
        if o.precision != "int8":
            doc["precision"] = o.precision
        if self.sufficiency is not None:
            doc["sufficiency"] = self.sufficiency.to_dict()
            if not self.sufficiency.enough:
                self.warnings.append(f"calibration data: {self.sufficiency.verdict()}")
        doc["pass"] = bool(final["meets"])
        doc["verdict"] = _verdict(doc)
        return doc

    def _warnings(self) -> list[str]:
        """What makes the search-set verdict doubtful though the run can go on."""
        out = []
        if _same_source(self.data, self.val):
            out.append(
                "--val is the calibration data itself: every step is judged on the samples it was fitted to, "
                "so the search-set numbers flatter it; pass a disjoint split"
            )
        vs = self.vs
        if vs.labels is not None and vs.metric is None and vs.ref_task is not None and vs.class_index is not None:
            classes = vs.reference[0][vs.class_index].shape[1]
            chance = 100.0 / classes
            if vs.ref_task <= 1.5 * chance:
                out.append(
                    f"the FP32 model scores {vs.ref_task:.1f}% top-1 on these labels, about chance for {classes} "
                    f"classes ({chance:.1f}%): are the labels in the order of the samples, and of this model?"
                )
        return out

    def _kept(self) -> dict:
        """The last stage whose result was kept: what the output set holds."""
        return next(s for s in reversed(self.stages) if s.get("kept", True))

    def _keep(self, row: dict, name: str) -> bool:
        """Keep a step only if it scores better than the last kept stage on the search set."""
        previous = next(s for s in reversed(self.stages[:-1]) if s.get("kept", True))
        if self._better(row, previous):
            return True
        row["kept"] = False
        row["note"] = "not kept: no better than without it on the search set"
        self.say(f"  {name} not kept (no better on the search set)")
        return False

    def _better(self, new: dict, old: dict) -> bool:
        """``new`` scores better than ``old``: meeting the target first; then, on the target's
        own terms, the task score when the target is a task drop, else the worst output cosine
        (NaN/missing is the worst)."""
        new_loss, old_loss = loss(new, self.vs.ref_task), loss(old, self.vs.ref_task)
        if "max_accuracy_drop" not in self.gates:
            new_loss, old_loss = new_loss[::-1], old_loss[::-1]
        return (not new["meets"], *new_loss) < (not old["meets"], *old_loss)

    def _layer_progress(self, done: int, total: int) -> None:
        if done == total or done % 10 == 0:
            self.say(f"  recovered {done}/{total} layers")

    def _fallback(self, workers, ray) -> None:
        from calibkit.quantize.publish import scales_for
        from calibkit.sensitivity import fallback

        self.say("fallback: which layers recovery could not fix")
        d = self.tmp / "fallback-in"
        d.mkdir()
        path = d / self.model_path.name
        onnx.save_model(self.model, str(path))
        scales = d / "scales.json"
        scales.write_text(scales_for(self.hset, self.amax, self.why, path)[0].dumps())
        try:
            res = fallback(
                path,
                scales,
                self.val,
                self.tmp / "fallback",
                labels=self.labels,
                metric=self.metric,
                target=self.target,
                preprocess=self.preprocess,
                feed=self.feed,
                workers=workers,
                ray=ray,
                device=self.device,
                reference=self.model_path,  # judged against the original FP32 model, not the recovered one
            )
        except ThresholdFailed as exc:
            res = exc.result
        # Layers kept in float keep the recovered weights: downstream layers were corrected for
        # them, and the fallback verified exactly this model (restoring the original weights of 6
        # float layers on PP-OCRv4 rec took the search-set cosine from 0.990 down to 0.983).
        nodes = [n for n in res.exclude_list.read_text().splitlines() if n]
        self.fallback_doc = {
            k: res.doc.get(k) for k in ("verdict", "pass", "evaluations", "steps", "kept") if k in res.doc
        }
        q, total = ST.int8_fraction(self.model, self.amax, nodes)
        row = self._stage(f"+ fallback ({total - q} layers kept in float)", "fallback", self.model, self.amax, nodes)
        if self._keep(row, "fallback"):
            self.excluded = nodes

    def publish(self, tx, doc: dict) -> dict:
        from calibkit.quantize.publish import publish

        return publish(tx, self, doc)


def _verdict(doc: dict) -> str:
    final = next(s for s in reversed(doc["stages"]) if s.get("kept", True))
    gates = ", ".join(f"{k} {v}" for k, v in doc["target"].items())
    share = f"{final['int8_layers']}/{final['layers']} compute layers in {doc.get('precision', 'int8').upper()}"
    if doc["pass"]:
        return f"PASS: {final['stage']} meets the target ({gates}) with {share}"
    return f"FAIL: no step met the target ({gates}); best reached: {final['stage']}, {share}"


def read_feeds(model: onnx.ModelProto, data, preprocess, feed: FeedOptions, batch: int) -> list[dict[str, np.ndarray]]:
    """The calibration data as run batches of ``batch``; NaN/inf in a float input is refused
    (recovery fits weights to these values: one NaN would turn every statistic into NaN)."""
    specs = input_specs(model, feed.batch_axes)
    source = open_source(data, specs, preprocess)
    feeds = []
    for b in run_batches(source, specs, batch, FeedStats(), feed):
        f = {k: np.ascontiguousarray(v) for k, v in b.items()}
        for k, v in f.items():
            if v.dtype.kind == "f" and not np.all(np.isfinite(v)):
                bad = int(np.size(v) - np.count_nonzero(np.isfinite(v)))
                raise CalibkitError(
                    f"calibration data {source.description}: input {k!r} holds {bad} NaN/inf values in batch "
                    f"{len(feeds) + 1}; quantize fits weights to this data: fix or drop those samples"
                )
        feeds.append(f)
    return feeds


def _same_source(a, b) -> bool:
    """Whether two data arguments name the same file or folder."""
    try:
        return isinstance(a, (str, Path)) and isinstance(b, (str, Path)) and Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


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
