"""Sensitivity/fallback bench: evaluations per second and the speed-up of workers and Ray.

    python bench/sensitivity.py                      # hostile CNN (built here): 1 worker, 2 workers, Ray
    python bench/sensitivity.py --corpus ppocrv4_rec --samples 32   # the corpus text recognizer

Each configuration runs ``calibkit sensitivity`` (through the API) in a fresh evaluation cache,
so nothing is reused between them; the FP32 reference is computed once per run. Ratios are
against the 1-worker run in the same process. With --corpus, the task metric is CTC greedy
decoding compared with FP32's decoded sequence (labels: a hash of FP32's sequence per sample),
and a ``fallback`` with --max-accuracy-drop follows, printing FP32 / INT8 / after-fallback.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "helpers"))

METRIC = """
import hashlib
import numpy as np


def decode(probs):
    ids = probs.argmax(-1)
    out = []
    for row in ids:
        out.append([int(c) for i, c in enumerate(row) if c != 0 and (i == 0 or c != row[i - 1])])
    return out


def seq_hash(seq):
    return int.from_bytes(hashlib.sha256(np.asarray(seq, np.int64).tobytes()).digest()[:7], "little")


def metric(outputs, labels):
    probs = next(iter(outputs.values()))
    return np.array([float(seq_hash(s) == int(l)) for s, l in zip(decode(probs), labels)])
"""


def _hostile(tmp: Path, samples: int):
    import models

    from calibkit.calibration import calibrate

    model = models.hostile_net(tmp / "hostile.onnx")
    rng = np.random.default_rng(1)
    np.savez(tmp / "cal.npz", x=rng.normal(0, 1, (64, 3, 8, 8)).astype(np.float32))
    np.savez(tmp / "val.npz", x=rng.normal(0, 1, (samples, 3, 8, 8)).astype(np.float32))
    calibrate(model, tmp / "cal.npz", output_dir=tmp / "cal")
    return model, tmp / "cal" / "scales.json", tmp / "val.npz", {}


def _corpus(tmp: Path, name: str, samples: int, method: str):
    import onnxruntime as ort

    sys.path.insert(0, str(ROOT / "tools"))
    import corpus

    from calibkit.calibration import calibrate

    root = corpus.cache_dir()
    model = corpus.model_path(root, corpus.by_name(name))
    cal = corpus.generate(root, name, 64, seed=11)
    val = corpus.generate(root, name, samples, seed=12)
    np.savez(tmp / "cal.npz", **cal)
    np.savez(tmp / "val.npz", **val)
    calibrate(model, tmp / "cal.npz", method=method, output_dir=tmp / "cal")
    (tmp / "seq.py").write_text(METRIC)
    ns: dict = {}
    exec(METRIC, ns)
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    probs = sess.run(None, val)[0]
    np.save(tmp / "labels.npy", np.array([ns["seq_hash"](s) for s in ns["decode"](probs)], np.int64))
    return (
        model,
        tmp / "cal" / "scales.json",
        tmp / "val.npz",
        {"labels": str(tmp / "labels.npy"), "metric": f"{tmp / 'seq.py'}:metric"},
    )


def _rss_mb(who: str) -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF if who == "self" else resource.RUSAGE_CHILDREN)
    return r.ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", help="corpus model name (python tools/corpus.py list)")
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--method", default="entropy")
    ap.add_argument("--max-accuracy-drop", type=float, default=5.0)
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument(
        "--downstream-only",
        action="store_true",
        help="only compare 2 workers with full runs against 2 workers with downstream-only evaluation",
    )
    args = ap.parse_args()
    from calibkit.errors import ThresholdFailed
    from calibkit.sensitivity import Target, fallback, sensitivity

    with tempfile.TemporaryDirectory(prefix="calibkit-bench-sens-") as t:
        tmp = Path(t)
        model, scales, val, task = (
            _corpus(tmp, args.corpus, args.samples, args.method) if args.corpus else _hostile(tmp, args.samples)
        )
        print(f"model {Path(model).name}, {args.samples} validation samples, {os.cpu_count()} CPUs")
        from calibkit.sensitivity import downstream

        budget = downstream.BUDGET_BYTES
        runs = [("2 workers, full runs", 2, None, 0), ("2 workers, downstream only", 2, None, budget)]
        if not args.downstream_only:
            runs = (
                [("1 worker", 1, None, budget), ("2 workers", 2, None, budget)]
                + ([] if args.no_ray else [("Ray, 2 CPUs (local cluster)", 2, "auto", budget)])
                + runs[:1]
            )
        base = None
        for k, (label, workers, ray, disk) in enumerate(runs):
            downstream.BUDGET_BYTES = disk  # 0: every configuration is a full run (the old path)
            os.environ["CALIBKIT_CACHE"] = str(tmp / f"cache-{k}")
            t0 = time.perf_counter()
            res = sensitivity(model, scales, val, tmp / f"sens-{k}", workers=workers, ray=ray, **task)
            wall = time.perf_counter() - t0
            n = res.doc["evaluations"]["run"]
            rate = res.doc["execution"]["per_second_after_startup"] or float("nan")
            base = base or (wall, rate)
            print(
                f"{label:30s} {n} evaluations, {wall:6.1f} s end to end ({base[0] / wall:4.2f}x vs {runs[0][0]}); "
                f"after start-up {rate:6.2f} evaluations/s ({rate / base[1]:4.2f}x); top layer {res.doc['layers'][0]['layer']}; "
                f"peak RSS: this process {_rss_mb('self'):.0f} MB, largest worker {_rss_mb('children'):.0f} MB"
            )
        downstream.BUDGET_BYTES = budget
        if args.corpus and not args.downstream_only:
            os.environ["CALIBKIT_CACHE"] = str(tmp / "cache-1")
            t0 = time.perf_counter()
            try:
                fb = fallback(
                    model,
                    scales,
                    val,
                    tmp / "fb",
                    workers=2,
                    target=Target(max_accuracy_drop=args.max_accuracy_drop),
                    **task,
                )
            except ThresholdFailed as exc:
                fb = exc.result
            doc = fb.doc
            ver = doc["verification"]
            print(
                f"fallback (--max-accuracy-drop {args.max_accuracy_drop}, 2 workers, sensitivity reused): {time.perf_counter() - t0:.1f} s; {doc['verdict']}"
            )
            print(
                f"  sequence accuracy vs FP32 decode: FP32 {ver['fp32']['accuracy']:.1f}%  INT8 {ver['before']['accuracy']:.1f}%  after fallback {ver['after']['accuracy']:.1f}%"
            )
            print(
                f"  worst output cosine: INT8 {ver['before']['min_cosine']:.4f}  after fallback {ver['after']['min_cosine']:.4f}"
            )
            print(
                f"  kept in float ({len(doc['exclude_nodes'])} nodes of {doc['units']} layers): {', '.join(doc['exclude_nodes'])}"
            )
            print(
                f"  evaluations: {doc['evaluations']['spent']} ({doc['evaluations']['reused_from_earlier_runs']} reused from the sensitivity run)"
            )


if __name__ == "__main__":
    main()
