"""Every corpus model through the real CLI: calibrate (entropy) -> export-qdq -> validate
(ort-int8, ort-fp16). Prints a markdown table: times, tensor counts, INT8/FP16 vs FP32 output cosine.

    python tools/corpus.py fetch && python bench/corpus.py > bench/corpus.md
    python bench/corpus.py --only silero_vad,oww_silero_vad   # rows of those models only
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("calibkit_corpus", REPO / "tools" / "corpus.py")
corpus = importlib.util.module_from_spec(spec)
spec.loader.exec_module(corpus)


def run(*args, cwd) -> tuple[int, float, str]:
    t = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-m", "calibkit", *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=900
    )
    return r.returncode, time.perf_counter() - t, (r.stderr.strip().splitlines() or [""])[-1]


def main() -> None:
    only = set(sys.argv[sys.argv.index("--only") + 1].split(",")) if "--only" in sys.argv[:-1] else None
    root = corpus.cache_dir()
    print(
        "| model | exporter | calibrate s | calibrated | listed, not calibrated | export s | validate s | INT8 min output cosine | INT8 worst SQNR dB | FP16 min cosine |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for m in corpus.MODELS:
        if only is not None and m["name"] not in only:
            continue
        path = corpus.model_path(root, m)
        if not path.exists():
            print(f"| {m['name']} | absent: run tools/corpus.py fetch | | | | | | | | |")
            continue
        calib, val = corpus.input_paths(root, m)
        if not (calib.exists() and val.exists()):
            corpus.make_inputs(root, m)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "cal"
            rc, tc, err = run(
                "calibrate", path, "--data", calib, "--method", "entropy", "-o", out, "--device", "cpu", cwd=tmp
            )
            if rc:
                print(f"| {m['name']} | {m['exporter'][:40]} | FAILED {rc}: {err[:80]} | | | | | | | |")
                continue
            sc = json.loads((out / "scales.json").read_text())
            rc, te, err = run("export-qdq", path, "--scales", out / "scales.json", "-o", Path(tmp) / "q.onnx", cwd=tmp)
            rep = Path(tmp) / "r.html"
            rv, tv, errv = run(
                "validate",
                path,
                "--scales",
                out / "scales.json",
                "--data",
                val,
                "--backends",
                "ort-int8,ort-fp16",
                "--report",
                rep,
                "--device",
                "cpu",
                "--min-cosine",
                "-1",
                cwd=tmp,
            )
            cos = {"int8": "–", "fp16": "–"}
            sq = "–"
            if rep.with_suffix(".results.json").exists():
                doc = json.loads(rep.with_suffix(".results.json").read_text())
                for c in doc["candidates"][1:]:
                    key = "int8" if "int8" in c["backend"] else "fp16"
                    vals = [o["cosine"] for o in c["outputs"].values() if isinstance(o["cosine"], float)]
                    cos[key] = f"{min(vals):.4f}" if vals else "nan"
                    if key == "int8":
                        s = [o["sqnr_db"] for o in c["outputs"].values() if isinstance(o["sqnr_db"], float)]
                        sq = f"{min(s):.1f}" if s else "nan"
            exp = f"{te:.1f}" if rc == 0 else f"FAILED: {err[:60]}"
            val_s = f"{tv:.1f}" if rv == 0 else f"exit {rv}: {errv[:60]}"
            print(
                f"| {m['name']} | {m['exporter'].split(' (')[0]} | {tc:.1f} | {len(sc['tensors'])} | {len(sc.get('uncalibrated') or {})} | {exp} | {val_s} | {cos['int8']} | {sq} | {cos['fp16']} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
