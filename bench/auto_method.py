"""`auto` vs every single threshold method, by `calibkit compare`, on three models:

    python bench/auto_method.py demo|hostile|ppocr|all [-o DIR]

demo     the shipped digits CNN (calibkit compare with no model), top-1 accuracy on its labels
hostile  a small CNN built here whose conv1 channel 3 has bias 1000 (and conv2 reads that
         channel through 1e-3 weights, so it matters): top-1 agreement with FP32
ppocr    corpus ppocrv4_rec (tools/corpus.py) calibrated on its 16 calib lines, scored on 32
         fresh lines: CTC greedy-decoded sequence agreement with FP32 (a --metric) and cosine

Prints one markdown table per model (bench/auto_method.md holds a run).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parents[1]
METHODS = "entropy,percentile:99.9,percentile:99.99,percentile:99.999,minmax,mse,auto"


def calibkit(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200", "NO_COLOR": "1"}
    r = subprocess.run(
        [sys.executable, "-m", "calibkit", *map(str, args)], cwd=cwd, capture_output=True, text=True, env=env
    )
    if r.returncode not in (0, 3):
        raise SystemExit(f"calibkit {' '.join(map(str, args))} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return r


def table(title: str, results: Path, out_dir: Path) -> str:
    doc = json.loads(results.read_text())
    head = "| rank | method | task score % | min output cosine | worst output SQNR dB | top-1 agreement | tensors clipping > 0.1% | auto's picks |"
    rows = [f"### {title}", "", head, "|---|---|---|---|---|---|---|---|"]
    for c in doc["candidates"][1:]:
        outs = list(c["outputs"].values())
        cos = min(o["cosine"] for o in outs)
        sq = min(o["sqnr_db"] if not isinstance(o["sqnr_db"], str) else float("inf") for o in outs)
        top1 = [o.get("top1_agreement") for o in outs if o.get("top1_agreement") is not None]
        cw = doc.get("clip_warnings", {}).get(c["method"], {}).get("count", "-")
        picks = ""
        if c["method"] == "auto":
            from collections import Counter

            t = json.loads((out_dir / "auto" / "scales.json").read_text())["tensors"]
            picks = ", ".join(f"{m} {n}" for m, n in Counter(v["method"] for v in t.values()).most_common())
        acc = "-" if c["accuracy"] is None else f"{c['accuracy']:.2f}"
        rows.append(
            f"| {c.get('rank') or '-'} | {c['method']} | {acc} | {cos:.4f} | {sq:.2f} | {'-' if not top1 else f'{min(top1):.4f}'} | {cw} | {picks} |"
        )
    return "\n".join(rows) + "\n"


def run_demo(out: Path) -> str:
    d = out / "demo"
    d.mkdir(parents=True, exist_ok=True)
    calibkit("compare", "--methods", METHODS, "--report", d / "compare.html", "-o", d / "methods", cwd=d)
    n = json.loads((d / "compare.results.json").read_text())["data"]["samples"]
    return table(
        f"shipped demo (digits CNN, {n} validation images, score = accuracy on their labels)",
        d / "compare.results.json",
        d / "methods",
    )


def hostile_model(path: Path, sparse: bool = False) -> Path:
    """dense: conv1 channel 3 is ~1000 everywhere (bias 1000), 1/8 of the tensor's values;
    sparse: channel 3 = Relu(400 w.x - 800) (w.x ~ N(0, 1)), huge (up to ~1000) at ~2% of its positions."""
    rng = np.random.default_rng(0)
    w1 = rng.normal(0, 0.4, (8, 3, 3, 3)).astype(np.float32)
    b1 = rng.normal(0, 0.1, 8).astype(np.float32)
    if sparse:
        w1[3] *= 400.0 / np.linalg.norm(w1[3])
        b1[3] = -800.0
    else:
        b1[3] = 1000.0  # the outlier channel
    w2 = rng.normal(0, 0.3, (16, 8, 3, 3)).astype(np.float32)
    w2[:, 3] *= 1e-2 if sparse else 1e-3  # read through small weights: it contributes O(1), like real outlier channels
    wf = rng.normal(0, 0.3, (16, 10)).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (wf, "wf"))]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "wf"], ["y"], name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "hostile",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def run_hostile(out: Path, sparse: bool = False) -> str:
    d = out / ("hostile_sparse" if sparse else "hostile")
    d.mkdir(parents=True, exist_ok=True)
    model = hostile_model(d / "hostile.onnx", sparse)
    rng = np.random.default_rng(1)
    np.savez(d / "calib.npz", x=rng.normal(0, 1, (256, 3, 16, 16)).astype(np.float32))
    val = rng.normal(0, 1, (512, 3, 16, 16)).astype(np.float32)
    np.savez(d / "val.npz", x=val)
    ref = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"x": val})[0]
    np.save(d / "labels.npy", ref.argmax(1))  # accuracy = top-1 agreement with FP32
    calibkit("calibrate", model, "--data", d / "calib.npz", "-o", d / "cal", cwd=d)
    calibkit(
        "compare",
        model,
        "--histograms",
        d / "cal/histograms.npz",
        "--data",
        d / "val.npz",
        "--labels",
        d / "labels.npy",
        "--methods",
        METHODS,
        "--report",
        d / "compare.html",
        "-o",
        d / "methods",
        cwd=d,
    )
    what = "channel 3 = Relu(400 w.x - 800): huge at ~2% of its positions" if sparse else "channel 3 bias 1000"
    return table(
        f"hostile CNN ({what}; 512 validation inputs; score = top-1 agreement with FP32)",
        d / "compare.results.json",
        d / "methods",
    )


METRIC = '''"""Task metrics for PP-OCRv4 rec against FP32's outputs, saved beside this file (per sample index)."""
import functools
from pathlib import Path

import numpy as np


@functools.cache
def ref(name):
    return np.load(Path(__file__).with_name(name))


def decode(p):
    """CTC greedy decoding: argmax per timestep, repeats collapsed, blank (0) dropped."""
    best = p.argmax(-1)
    keep = np.ones_like(best, bool)
    keep[:, 1:] = best[:, 1:] != best[:, :-1]
    return [tuple(int(c) for c in row[k & (row != 0)]) for row, k in zip(best, keep)]


def metric(outputs, labels):
    seqs, r = decode(next(iter(outputs.values()))), ref("fp32_seq.npy")
    return np.array([tuple(int(c) for c in r[i] if c >= 0) == s for s, i in zip(seqs, labels)], float)


def frames(outputs, labels):
    best = next(iter(outputs.values())).argmax(-1)
    return (best == ref("fp32_frames.npy")[np.asarray(labels)]).mean(axis=1)
'''


def run_ppocr(out: Path, n_val: int) -> str:
    spec = importlib.util.spec_from_file_location("calibkit_corpus", REPO / "tools" / "corpus.py")
    corpus = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(corpus)
    root = corpus.cache_dir()
    m = corpus.by_name("ppocrv4_rec")
    model = corpus.model_path(root, m)
    if not model.exists():
        raise SystemExit(f"{model} absent: run `python tools/corpus.py fetch --only ppocrv4_rec`")
    calib, _ = corpus.input_paths(root, m)
    if not calib.exists():
        corpus.make_inputs(root, m)
    d = out / "ppocr"
    d.mkdir(parents=True, exist_ok=True)
    val = corpus.generate(root, "ppocrv4_rec", n_val, 12345)["x"]
    np.savez(d / "val.npz", x=val)
    np.save(d / "labels.npy", np.arange(n_val))  # sample index: the metric looks up FP32's sequence
    (d / "metric.py").write_text(METRIC)
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    probs = np.concatenate([sess.run(None, {"x": val[i : i + 1]})[0] for i in range(n_val)])
    mspec = importlib.util.spec_from_file_location("ppocr_metric", d / "metric.py")
    metric = importlib.util.module_from_spec(mspec)
    mspec.loader.exec_module(metric)
    seqs = metric.decode(probs)
    ref = np.full((n_val, max(1, max(len(s) for s in seqs))), -1, np.int64)
    for i, s in enumerate(seqs):
        ref[i, : len(s)] = s
    np.save(d / "fp32_seq.npy", ref)
    np.save(d / "fp32_frames.npy", probs.argmax(-1))
    t = time.perf_counter()
    calibkit("calibrate", model, "--data", calib, "-o", d / "cal", cwd=d)
    print(f"ppocr calibrate: {time.perf_counter() - t:.1f} s", file=sys.stderr)
    text = []
    for fn, what in (("metric", "CTC greedy-decoded sequence agreement"), ("frames", "per-timestep argmax agreement")):
        t = time.perf_counter()
        calibkit(
            "compare",
            model,
            "--histograms",
            d / "cal/histograms.npz",
            "--data",
            d / "val.npz",
            "--labels",
            d / "labels.npy",
            "--metric",
            f"{d / 'metric.py'}:{fn}",
            "--methods",
            "entropy,percentile:99.99,minmax,mse,auto",
            "--report",
            d / f"compare-{fn}.html",
            "-o",
            d / "methods",
            cwd=d,
        )
        print(f"ppocr compare ({fn}): {time.perf_counter() - t:.1f} s", file=sys.stderr)
        text.append(
            table(
                f"PP-OCRv4 rec (corpus ppocrv4_rec, 16 calib lines, {n_val} validation lines; score = {what} with FP32, %)",
                d / f"compare-{fn}.results.json",
                d / "methods",
            )
        )
    return "\n".join(text)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("which", choices=["demo", "hostile", "hostile_sparse", "ppocr", "all"])
    ap.add_argument("-o", "--out", default=None)
    ap.add_argument("--ppocr-val", type=int, default=32)
    args = ap.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="calibkit-auto-"))
    parts = ["demo", "hostile", "hostile_sparse", "ppocr"] if args.which == "all" else [args.which]
    for p in parts:
        text = {
            "demo": lambda: run_demo(out),
            "hostile": lambda: run_hostile(out),
            "hostile_sparse": lambda: run_hostile(out, True),
            "ppocr": lambda: run_ppocr(out, args.ppocr_val),
        }[p]()
        print(text)
    print(f"outputs in {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
