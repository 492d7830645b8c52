"""Q/DQ placement and precision on the corpus: activation Q nodes, placement lint, held-out accuracy.

    nice -n 10 python bench/placement.py --models ppocr_cls,ppocrv4_rec [-o bench/out/accuracy]

Per model, from the entropy scales bench/accuracy.py left in <out>/<model>/entropy/ (calibrated
there on the calib split when missing) and the same held-out test split (tools/realdata.py):
calibkit export-qdq with --placement trt (today's, = trt-min) and trt-fused, each --precision
int8 and fp8, plus every ModelOpt Q/DQ model bench/accuracy.py wrote (<out>/<model>/modelopt-*/,
ModelOpt's own venv). Columns: activation QuantizeLinear nodes, lint findings by kind
(calibkit/qdq/lint.py), compute layers quantized, task metric vs labels, agreement with FP32,
worst-output cosine to FP32 (ORT CPU, basic optimizations: Q/DQ run as written). Appends the
table to bench/placement.md.

    nice -n 10 python bench/placement.py --fp8-corpus [--models a,b] [--method entropy]

FP8 on every corpus model present (tools/corpus.py's calib/val inputs): calibkit calibrate, then
calibkit validate --backends ort-int8,ort-fp8 (TensorRT placement), worst-output cosine of each;
appends that table too.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import onnx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import accuracy  # noqa: E402  (bench/accuracy.py: data, model paths, evaluation)

ROWS = (("trt", "int8"), ("trt", "fp8"), ("trt-fused", "int8"), ("trt-fused", "fp8"))
# the same histograms re-thresholded by the expected error on each precision's grid
AUTO_ROWS = (("trt-fused", "int8", "auto"), ("trt-fused", "fp8", "auto:fp8=1"))


def row(qdq: Path, model: Path, d: Path) -> dict:
    from calibkit.qdq.lint import LINTS, activation_q_count, lint

    q = onnx.load(str(qdq), load_external_data=False)
    found = lint(q)
    return {
        "act_q": activation_q_count(q),
        "lint": {k: sum(1 for f in found if f.lint == k) for k in LINTS},
        **accuracy.evaluate(qdq, model, d),
    }


def fp8_corpus(models: list[str] | None, method: str, out: Path, md: Path) -> None:
    import importlib.util
    import time

    spec = importlib.util.spec_from_file_location("calibkit_corpus", REPO / "tools" / "corpus.py")
    corpus = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(corpus)
    root = corpus.cache_dir()
    lines = [
        f"\n### FP8 vs INT8 on the corpus (method {method}, TensorRT placement, tools/corpus.py calib/val inputs)\n",
        "| model | worst-output cosine INT8 | worst-output cosine FP8 | FP8 >= 0.995 where INT8 is |",
        "|---|---|---|---|",
    ]
    with md.open("a") as fh:  # rows are appended as they come: a long run cut short keeps its rows
        fh.write("\n".join(lines) + "\n")
    for m in corpus.MODELS:
        if models and m["name"] not in models:
            continue
        path = corpus.model_path(root, m)
        if not path.exists():
            continue
        calib, val = corpus.input_paths(root, m)
        if not (calib.exists() and val.exists()):
            corpus.make_inputs(root, m)
        work = out / "fp8-corpus" / m["name"]
        t0 = time.perf_counter()
        accuracy._cli("calibrate", path, "--data", calib, "--method", method, "-o", work, "--device", "cpu")
        accuracy._cli(
            "validate", path, "--scales", work / "scales.json", "--data", val, "--device", "cpu",
            "--backends", "ort-int8,ort-fp8", "--report", work / "report.html",
        )  # fmt: skip
        doc = json.loads((work / "report.results.json").read_text())
        cos = {}
        for c in doc["candidates"][1:]:
            vals = [o["cosine"] for o in c["outputs"].values()]
            cos[c["backend"]] = min(v if isinstance(v, float) else float("nan") for v in vals)
        i8, f8 = cos.get("ort-int8", float("nan")), cos.get("ort-fp8", float("nan"))
        ok = "n/a (INT8 below)" if not i8 >= 0.995 else ("yes" if f8 >= 0.995 else "NO")
        print(m["name"], json.dumps(cos), f"{time.perf_counter() - t0:.0f} s", flush=True)
        with md.open("a") as fh:
            fh.write(f"| {m['name']} | {i8:.4f} | {f8:.4f} | {ok} |\n")


def _add(md: Path, name: str, results: dict, label: str, r: dict) -> None:
    results[label] = r
    print(name, label, json.dumps(r), flush=True)
    lines = [] if len(results) > 1 else [
        f"\n### {name} (held-out test split: {r['samples']} samples; FP32 task {r['task_fp32']:.3f}; entropy scales unless named)\n",
        "| row | activation Q | lint: conv-add / concat / constant / zero-point / scale / island | compute layers quantized | task vs labels | agrees with FP32 | worst-output cosine |",
        "|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    lint = " / ".join(str(r["lint"][k]) for k in r["lint"])
    lines.append(
        f"| {label} | {r['act_q']} | {lint} | {r['int8_layers']}/{r['layers']} | {r['task']:.3f} | "
        f"{r['agree_fp32']:.3f} | {r['min_cosine']:.4f} |"
    )
    with md.open("a") as fh:  # row by row: a run cut short keeps its rows
        fh.write("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="ppocr_cls,ppocrv4_rec")
    ap.add_argument("-o", "--out", type=Path, default=REPO / "bench" / "out" / "accuracy")
    ap.add_argument("--md", type=Path, default=REPO / "bench" / "placement.md")
    ap.add_argument("--fp8-corpus", action="store_true", help="FP8 vs INT8 cosine on every corpus model present")
    ap.add_argument("--method", default="entropy")
    a = ap.parse_args()
    if a.fp8_corpus:
        given = a.models.split(",") if a.models != ap.get_default("models") else None
        return fp8_corpus(given, a.method, a.out, a.md)
    for name in a.models.split(","):
        model = accuracy._model_path(name)
        d = accuracy._data(name, a.out)
        work = a.out / name
        scales = work / "entropy" / "scales.json"
        if not scales.exists():
            accuracy._cli("calibrate", model, "--data", d / "calib.npz", "--method", "entropy", "-o", work / "entropy")
        results = {}

        for placement, precision in ROWS:
            label = f"calibkit {placement} {precision}"
            qdq = work / "placement" / f"{placement}.{precision}.qdq.onnx"
            qdq.parent.mkdir(parents=True, exist_ok=True)
            accuracy._cli(
                "export-qdq", model, "--scales", scales, "-o", qdq, "--placement", placement, "--precision", precision
            )
            _add(a.md, name, results, label, row(qdq, model, d))
        for placement, precision, method in AUTO_ROWS:
            sdir = work / "placement" / method.replace(":", "-").replace("=", "")
            accuracy._cli(
                "calibrate", model, "--histograms", work / "entropy" / "histograms.npz", "--method", method, "-o", sdir
            )
            label = f"calibkit {placement} {precision} ({method} scales)"
            qdq = sdir / f"{placement}.{precision}.qdq.onnx"
            accuracy._cli(
                "export-qdq", model, "--scales", sdir / "scales.json", "-o", qdq,
                "--placement", placement, "--precision", precision,
            )  # fmt: skip
            _add(a.md, name, results, label, row(qdq, model, d))
        for mo in sorted(work.glob("modelopt-*/model.qdq.onnx")):
            kind = mo.parent.name.removeprefix("modelopt-")
            label = "ModelOpt max fp8" if kind == "fp8" else f"ModelOpt {kind} int8"
            _add(a.md, name, results, label, row(mo, model, d))
        (work / "placement" / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
