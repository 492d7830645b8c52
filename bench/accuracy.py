"""Held-out INT8 accuracy: calibkit's methods, `calibkit quantize` and ONNX Runtime's quantizer.

    python bench/accuracy.py --models ppocr_cls,ppocrv4_rec [--rows entropy,auto,quantize,ort] [-o bench/out/accuracy]

For each corpus model, realistic labelled data from tools/realdata.py (calib / search / test,
disjoint): every row makes a Q/DQ model from the calib split (quantize also searches on the
search split), then every Q/DQ model runs on the held-out test split as written (ORT CPU,
basic optimizations: TensorRT's INT8 numerics). Columns: task metric vs labels and vs FP32
(the data set's metric.py: score / agree), worst-output cosine to FP32, compute layers whose
activation input is quantized, and the wall time to make the model. Appends a markdown table
per model to bench/accuracy.md (-o holds the models and the raw JSON).

Rows: entropy, auto (calibkit calibrate + export-qdq), quantize (defaults), quantize-nofallback,
quantize-no-<technique> (each technique off in turn), ort-{entropy,percentile,minmax}
(onnxruntime.quantization.quantize_static: QDQ, per-channel, symmetric, same op types).
modelopt-{entropy,max}: NVIDIA ModelOpt's ONNX PTQ (int8, CPU calibration, fp32 high precision)
run by the interpreter of --modelopt-python (its own venv: it pins another onnxruntime).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx

REPO = Path(__file__).resolve().parents[1]
# Each technique off, with the fallback off too (compare with quantize-nofallback): the layer
# search would otherwise hide what a technique buys by keeping layers in float instead.
QUANTIZE_OFF = {
    "quantize-no-consumer": ["--thresholds", "auto", "--no-fallback"],
    "quantize-no-adaround": ["--rounding", "nearest", "--no-fallback"],
    "quantize-no-bias": ["--no-bias-correction", "--no-fallback"],
    "quantize-no-smoothquant": ["--smoothquant", "off", "--no-fallback"],
    "quantize-no-equalize": ["--no-equalize", "--no-fallback"],
    # the other target: a task drop of at most 0.5 points, no cosine gate
    "quantize-task": ["--max-accuracy-drop", "0.5"],
}


def _cli(*args) -> float:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "calibkit", *map(str, args)], capture_output=True, text=True)
    if r.returncode not in (0, 3):
        raise SystemExit(f"calibkit {' '.join(map(str, args))} exited {r.returncode}:\n{r.stderr[-2000:]}")
    return time.perf_counter() - t0


def _model_path(name: str) -> Path:
    spec = importlib.util.spec_from_file_location("calibkit_corpus", REPO / "tools" / "corpus.py")
    corpus = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(corpus)
    return corpus.model_path(corpus.cache_dir(), corpus.by_name(name))


def _data(name: str, out: Path) -> Path:
    d = out / "data" / name
    if not d.is_dir():
        subprocess.run([sys.executable, str(REPO / "tools" / "realdata.py"), "make", name, "--out", str(d)], check=True)
    return d


def make(row: str, model: Path, d: Path, work: Path) -> tuple[Path, float]:
    """The Q/DQ model of ``row`` and the seconds it took."""
    work.mkdir(parents=True, exist_ok=True)
    qdq = work / "model.qdq.onnx"
    metric = ["--metric", f"{d / 'metric.py'}:score", "--labels", d / "search.labels.npy"]
    if row in ("entropy", "auto"):
        t = _cli("calibrate", model, "--data", d / "calib.npz", "--method", row, "-o", work)
        t += _cli("export-qdq", model, "--scales", work / "scales.json", "-o", qdq)
        return qdq, t
    if row.startswith("quantize"):
        extra = QUANTIZE_OFF.get(row, ["--no-fallback"] if row == "quantize-nofallback" else [])
        t = _cli("quantize", model, "--data", d / "calib.npz", "--val", d / "search.npz", *metric, *extra, "-o", work)
        return work / f"{model.stem}.qdq.onnx", t
    if row.startswith("ort-"):
        return _ort(row.removeprefix("ort-"), model, d, qdq)
    if row.startswith("modelopt-"):
        return _modelopt(row.removeprefix("modelopt-"), model, d, qdq)
    raise SystemExit(f"unknown row {row}")


def _ort(method: str, model: Path, d: Path, qdq: Path) -> tuple[Path, float]:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    calib = dict(np.load(d / "calib.npz"))
    opset = max(
        o.version for o in onnx.load(str(model), load_external_data=False).opset_import if o.domain in ("", "ai.onnx")
    )
    if opset < 13:  # ORT's per-channel DequantizeLinear needs opset 13 (its own docs: upgrade first)
        from onnx import version_converter

        upgraded = qdq.parent / f"opset13-{model.name}"
        onnx.save(version_converter.convert_version(onnx.load(str(model)), 13), str(upgraded))
        model = upgraded

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            n = len(next(iter(calib.values())))
            self.it = iter([{k: v[i : i + 1] for k, v in calib.items()} for i in range(n)])

        def get_next(self):
            return next(self.it, None)

    t0 = time.perf_counter()
    quantize_static(
        str(model),
        str(qdq),
        Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        calibrate_method={
            "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile,
            "minmax": CalibrationMethod.MinMax,
        }[method],
        op_types_to_quantize=["Conv", "ConvTranspose", "Gemm", "MatMul"],
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
    )
    return qdq, time.perf_counter() - t0


MODELOPT_PYTHON = [sys.executable]


def _modelopt(method: str, model: Path, d: Path, qdq: Path) -> tuple[Path, float]:
    import shutil

    # ModelOpt rewrites the file given as --onnx_path: hand it a copy, never the corpus model.
    copy = qdq.parent / f"input-{model.name}"
    shutil.copyfile(model, copy)
    for extra in model.parent.glob(f"{model.name}.data"):
        shutil.copyfile(extra, qdq.parent / extra.name)
    t0 = time.perf_counter()
    cmd = [MODELOPT_PYTHON[0], "-m", "modelopt.onnx.quantization", "--onnx_path", str(copy), "--quantize_mode", "int8"]
    cmd += ["--calibration_data_path", str(d / "calib.npz"), "--calibration_method", method]
    cmd += ["--calibration_eps", "cpu", "--high_precision_dtype", "fp32", "--output_path", str(qdq)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"modelopt exited {r.returncode}:\n{r.stderr[-3000:]}")
    return qdq, time.perf_counter() - t0


def evaluate(qdq: Path, model: Path, d: Path) -> dict:
    from calibkit.qdq.placement import COMPUTE_OPS
    from calibkit.sessions import session

    spec = importlib.util.spec_from_file_location("metric", d / "metric.py")
    metric = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(metric)
    test = dict(np.load(d / "test.npz"))
    labels = np.load(d / "test.labels.npy")
    f = session(onnx.load(str(model)), device="cpu")
    q = session(onnx.load(str(qdq)), device="cpu", exact_qdq=True)
    names = [o.name for o in f.get_outputs()]
    n = len(labels)
    ref, got = {k: [] for k in names}, {k: [] for k in names}
    dim0 = f.get_inputs()[0].shape[0]
    step = dim0 if isinstance(dim0, int) and dim0 > 0 else 16  # a fixed-batch model runs its own batch
    for i in range(0, n, step):
        feed = {k: v[i : i + step] for k, v in test.items()}
        for k, a, b in zip(names, f.run(names, feed), q.run(names, feed)):
            ref[k].append(a)
            got[k].append(b)
    ref = {k: np.concatenate(v) for k, v in ref.items()}
    got = {k: np.concatenate(v) for k, v in got.items()}
    cos = []
    for k in names:
        a, b = ref[k].ravel().astype(np.float64), got[k].ravel().astype(np.float64)
        cos.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))) if np.all(np.isfinite(b)) else float("nan"))
    g = onnx.load(str(qdq), load_external_data=False).graph
    producers = {o: node.op_type for node in g.node for o in node.output}
    compute = [node for node in g.node if node.op_type in COMPUTE_OPS]
    quantized = sum(1 for node in compute if producers.get(node.input[0]) == "DequantizeLinear")
    return {
        "task_fp32": float(np.mean(metric.score(ref, labels))),
        "task": float(np.mean(metric.score(got, labels))),
        "agree_fp32": float(np.mean(metric.agree(got, ref))),
        "min_cosine": min(cos),
        "int8_layers": quantized,
        "layers": len(compute),
        "samples": n,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="ppocr_cls,ppocrv4_rec")
    ap.add_argument("--rows", default="entropy,auto,quantize,ort-entropy,ort-percentile,ort-minmax")
    ap.add_argument("-o", "--out", type=Path, default=REPO / "bench" / "out" / "accuracy")
    ap.add_argument("--md", type=Path, default=REPO / "bench" / "accuracy.md")
    ap.add_argument("--modelopt-python", default=sys.executable, help="interpreter with nvidia-modelopt[onnx]")
    a = ap.parse_args()
    MODELOPT_PYTHON[0] = a.modelopt_python
    for name in a.models.split(","):
        model = _model_path(name)
        d = _data(name, a.out)
        results = {}
        for row in a.rows.split(","):
            try:
                qdq, secs = make(row, model, d, a.out / name / row)
                results[row] = {**evaluate(qdq, model, d), "seconds": round(secs, 1)}
            except (Exception, SystemExit) as exc:  # a peer tool failing is a result, not the end of the bench
                results[row] = {"failed": f"{type(exc).__name__}: {str(exc)[-300:]}".replace("\n", " ")}
            print(name, row, json.dumps(results[row]), flush=True)
        (a.out / name / "results.json").write_text(json.dumps(results, indent=1))
        ok = [r for r in results.values() if "failed" not in r]
        if not ok:
            continue
        fp = ok[0]["task_fp32"]
        lines = [
            f"\n### {name} (held-out test split: {ok[0]['samples']} samples; FP32 task {fp:.3f})\n",
            "| row | task vs labels | agrees with FP32 | worst-output cosine | compute layers INT8 | seconds |",
            "|---|---|---|---|---|---|",
        ]
        for row, r in results.items():
            if "failed" in r:
                lines.append(f"| {row} | failed: {r['failed'][:160]} | | | | |")
                continue
            lines.append(
                f"| {row} | {r['task']:.3f} | {r['agree_fp32']:.3f} | {r['min_cosine']:.4f} | "
                f"{r['int8_layers']}/{r['layers']} | {r['seconds']} |"
            )
        with open(a.md, "a") as fh:
            fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
