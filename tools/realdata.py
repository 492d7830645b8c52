"""Realistic labelled data sets for the corpus models (tools/corpus.py), with disjoint splits.

    python tools/realdata.py make NAME --out DIR [--calib 64 --search 64 --test 128 --seed 0]
    python tools/realdata.py list

``make`` writes into DIR (built in a temporary folder beside it, then renamed into place):

    calib.npz                       input name -> array [N, ...], preprocessed as the model's own pipeline
    search.npz, search.labels.npy   a split for choosing methods / layers; labels: int64 [N]
    test.npz, test.labels.npy       the held-out split; no text / sentence / utterance shared between splits
    labels.json                     what the metric needs (labels index into it), and the split items
    metric.py                       score(outputs, labels) and agree(a, b): per-sample floats in [0, 1]
    README.txt                      what the data is, how it was made, the metric, FP32's own test score

Use it as ``calibkit validate MODEL --data DIR/test.npz --metric DIR/metric.py:score
--labels DIR/test.labels.npy``. The bytes depend only on NAME, the counts, --seed and the
machine's fonts / text sources / espeak-ng (all recorded in labels.json).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import io
import json
import os
import shutil
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS))
import corpus  # noqa: E402

SPLITS = ("calib", "search", "test")
METRICS = TOOLS / "realdata_metrics"

# NAME -> (helper module, build function, one-line description)
DATASETS = {
    "ppocrv4_rec": ("realdata_ocr", "build_rec", "rendered English text lines -> CTC decode, exact match"),
    "ppocrv4_det": ("realdata_det", "build", "320x320 pages of rendered lines -> pixel F1 of prob>0.3 vs DB mask"),
    "ppocr_cls": ("realdata_ocr", "build_cls", "rendered lines, half turned 180 degrees -> argmax == orientation"),
    "minilm_l6": ("realdata_minilm", "build", "real sentences + paraphrase partners -> top-1 retrieval of the partner"),
    "ddddocr_common": ("realdata_dddd", "build", "rendered captcha-like strings -> CTC decode, exact match"),
    "oww_embedding": ("realdata_oww", "build", "espeak-ng speech -> mel windows -> cosine to FP32 >= 0.99"),
}


@dataclass
class Built:
    """What a builder returns; :func:`make` writes it."""

    model: Path
    inputs: dict[str, dict[str, np.ndarray]]  # split -> input name -> [N, ...]
    labels: dict[str, np.ndarray]  # "search"/"test" -> int64 [N]
    labels_json: dict  # must hold "items": split -> list of str (checked disjoint)
    readme: str  # one paragraph; "{fp32}" is replaced by FP32's test score
    batch: int = 16  # batch for the FP32 check run
    out_axis: int = 0  # the outputs' sample axis (ddddocr's CTC output is [T, N, C])
    files: dict[str, np.ndarray] = field(default_factory=dict)  # extra .npy files (e.g. a gallery)


def model_file(name: str) -> Path:
    """A corpus model's file; SystemExit naming the fetch command when absent."""
    root = corpus.cache_dir()
    p = corpus.model_path(root, corpus.by_name(name))
    if not p.exists():
        raise SystemExit(f"corpus model {name} absent from {root}: run `python tools/corpus.py fetch --only {name}`")
    return p


def session(path: Path, threads: int = 0):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def run_model(sess, inputs: dict[str, np.ndarray], batch: int = 16, out_axis: int = 0) -> dict[str, np.ndarray]:
    """Outputs of ``sess`` over ``inputs`` [N, ...] in batches, concatenated on ``out_axis``."""
    n = len(next(iter(inputs.values())))
    names = [o.name for o in sess.get_outputs()]
    parts = {k: [] for k in names}
    for s in range(0, n, batch):
        outs = sess.run(None, {k: v[s : s + batch] for k, v in inputs.items()})
        for k, o in zip(names, outs):
            parts[k].append(o)
    return {k: np.concatenate(v, axis=out_axis) for k, v in parts.items()}


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez layout (stored .npy members) with fixed zip timestamps: same arrays, same bytes."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for k, v in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(v), allow_pickle=False)
            zf.writestr(zipfile.ZipInfo(f"{k}.npy", date_time=(1980, 1, 1, 0, 0, 0)), buf.getvalue())


def save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as fh:
        np.lib.format.write_array(fh, np.ascontiguousarray(array), allow_pickle=False)


def load_metric(folder: Path):
    """metric.py of a data folder, imported standalone (as calibkit --metric does)."""
    spec = importlib.util.spec_from_file_location(f"realdata_metric_{abs(hash(str(folder)))}", folder / "metric.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def split_counts(counts: dict[str, int]) -> str:
    return " / ".join(f"{counts[s]} {s}" for s in SPLITS)


def check_disjoint(items: dict[str, list[str]]) -> None:
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1 :]:
            both = set(items.get(a, ())) & set(items.get(b, ()))
            if both:
                raise AssertionError(f"splits {a} and {b} share {len(both)} items, e.g. {sorted(both)[0]!r}")


def make(
    name: str, out: Path, counts: dict[str, int] | None = None, seed: int = 0, log=print, check: bool = True
) -> dict:
    """Build data set ``name`` into ``out`` atomically; returns {"fp32_test": score, "seconds": ...}."""
    if name not in DATASETS:
        raise SystemExit(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")
    counts = {"calib": 64, "search": 64, "test": 128, **(counts or {})}
    if min(counts.values()) < 1:
        raise SystemExit("every split needs at least one sample")
    t0 = time.time()
    mod_name, fn, _ = DATASETS[name]
    built: Built = getattr(importlib.import_module(mod_name), fn)(counts, seed, log)
    check_disjoint(built.labels_json["items"])
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp's 0700 would outlive the rename
    try:
        for split in SPLITS:
            x = built.inputs[split]
            if any(len(v) != counts[split] for v in x.values()):
                raise AssertionError(f"{name}: split {split} has {[len(v) for v in x.values()]} != {counts[split]}")
            save_npz(tmp / f"{split}.npz", x)
            if split != "calib":
                save_npy(tmp / f"{split}.labels.npy", built.labels[split].astype(np.int64))
        for fname, arr in built.files.items():
            save_npy(tmp / fname, arr)
        (tmp / "labels.json").write_text(json.dumps(built.labels_json, ensure_ascii=False, indent=0) + "\n")
        shutil.copyfile(METRICS / f"{name}.py", tmp / "metric.py")
        result = {"fp32_test": None}
        if check:  # FP32 on the test split through the written metric.py
            metric = load_metric(tmp)
            ref = run_model(session(built.model), built.inputs["test"], built.batch, built.out_axis)
            s = np.asarray(metric.score(ref, built.labels["test"]), np.float64)
            a = np.asarray(metric.agree(ref, ref), np.float64)
            if s.shape != (counts["test"],) or not np.isfinite(s).all() or not (a == 1).all():
                raise AssertionError(f"{name}: metric self-check failed (score shape {s.shape}, agree(ref, ref) {a})")
            result["fp32_test"] = float(s.mean())
        fp32 = f"{result['fp32_test']:.4f}" if result["fp32_test"] is not None else "(not measured)"
        (tmp / "README.txt").write_text(" ".join(built.readme.replace("{fp32}", fp32).split()) + "\n")
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old.{os.getpid()}")
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    result["seconds"] = time.time() - t0
    log(f"{name}: wrote {out} ({split_counts(counts)}; FP32 test score {fp32}; {result['seconds']:.1f} s)")
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    mk = sub.add_parser("make", help="build one data set")
    mk.add_argument("name", choices=list(DATASETS))
    mk.add_argument("--out", required=True, help="folder to write (replaced atomically)")
    for split, n in (("calib", 64), ("search", 64), ("test", 128)):
        mk.add_argument(f"--{split}", type=int, default=n, help=f"samples in {split} (default {n})")
    mk.add_argument("--seed", type=int, default=0)
    mk.add_argument("--no-check", action="store_true", help="skip the FP32 run on test (README says not measured)")
    sub.add_parser("list", help="the data sets and whether their corpus model is present")
    a = ap.parse_args(argv)
    if a.command == "list":
        root = corpus.cache_dir()
        for name, (_, _, desc) in DATASETS.items():
            present = corpus.model_path(root, corpus.by_name(name)).exists()
            print(f"{'ready ' if present else 'ABSENT'} {name:16s} {desc}")
        print(f"corpus: {root}  (absent models: python tools/corpus.py fetch --only NAME)")
        return 0
    counts = {"calib": a.calib, "search": a.search, "test": a.test}
    make(a.name, Path(a.out), counts, a.seed, check=not a.no_check)
    return 0


if __name__ == "__main__":
    sys.exit(main())
