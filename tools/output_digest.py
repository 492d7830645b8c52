"""Byte-level digest of calibkit's outputs, for refactors that must not change behaviour.

    python tools/output_digest.py record digest.json      # before the change
    python tools/output_digest.py check digest.json       # after it: exit 1 on any difference
    python tools/output_digest.py record d.json --only demo,ppocr_cls

For the shipped demo and every corpus model present (``tools/corpus.py fetch``), it runs the
real CLI in fresh processes: ``calibrate`` (entropy and auto) and ``export-qdq`` of each
(trt and ort placement), then hashes every file written: the TensorRT cache, scales.json,
histograms.npz, TensorsData and the Q/DQ models. Work directories are fixed paths
(``--work``, default ``bench/out/digest``) so that anything that records a path records the
same one in both runs.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _corpus():
    spec = importlib.util.spec_from_file_location("calibkit_corpus", REPO / "tools" / "corpus.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _cli(*args, cwd: Path) -> str:
    """Runs the CLI; a failure is part of the behaviour being compared: 'exit N: last line'."""
    r = subprocess.run(
        [sys.executable, "-m", "calibkit", *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=1800
    )
    if r.returncode in (0, 3):
        return ""
    last = (r.stderr.strip().splitlines() or [""])[-1]
    return f"exit {r.returncode}: " + " ".join(w for w in last.split() if "/tmp" not in w and str(cwd) not in w)


def _targets(only: set[str] | None) -> list[tuple[str, Path | None, Path | None]]:
    out: list[tuple[str, Path | None, Path | None]] = [("demo", None, None)]
    corpus = _corpus()
    root = corpus.cache_dir()
    for m in corpus.MODELS:
        path = corpus.model_path(root, m)
        if path.exists():
            calib, _ = corpus.input_paths(root, m)
            if not calib.exists():
                corpus.make_inputs(root, m)
            out.append((m["name"], path, calib))
    return [t for t in out if only is None or t[0] in only]


def _digest_one(name: str, model: Path | None, calib: Path | None, work: Path) -> dict[str, str]:
    base = work / name
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    hashes: dict[str, str] = {}
    for method in ("entropy", "auto"):
        out = base / method
        if model is None:
            demo = _demo_paths()
            failed = _cli(
                "calibrate",
                demo["model"],
                "--data",
                demo["calib"],
                "--preprocess",
                demo["preprocess"],
                "--method",
                method,
                "-o",
                out,
                "--device",
                "cpu",
                cwd=base,
            )
            model_path = demo["model"]
        else:
            failed = _cli(
                "calibrate", model, "--data", calib, "--method", method, "-o", out, "--device", "cpu", cwd=base
            )
            model_path = model
        if failed:
            hashes[f"{method}/calibrate"] = failed
        for placement in ("trt", "ort"):
            failed = _cli(
                "export-qdq",
                model_path,
                "--scales",
                out / "scales.json",
                "--placement",
                placement,
                "-o",
                out / f"model.{placement}.qdq.onnx",
                cwd=base,
            )
            if failed:
                hashes[f"{method}/export-qdq-{placement}"] = failed
        for f in sorted(out.rglob("*")):
            if f.is_file() and ".calibkit" not in f.relative_to(out).parts:
                hashes[f"{method}/{f.relative_to(out)}"] = hashlib.sha256(f.read_bytes()).hexdigest()
    return hashes


def _demo_paths() -> dict[str, Path]:
    demo = REPO / "calibkit" / "demo"
    return {
        "model": demo / "digits_cnn.onnx",
        "calib": demo / "digits" / "calib",
        "preprocess": demo / "digits" / "preprocess.json",
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=["record", "check"])
    ap.add_argument("file", type=Path)
    ap.add_argument("--only", help="comma-separated names (demo, corpus model names)")
    ap.add_argument("--work", type=Path, default=REPO / "bench" / "out" / "digest")
    a = ap.parse_args(argv)
    only = set(a.only.split(",")) if a.only else None
    got = {}
    for name, model, calib in _targets(only):
        got[name] = _digest_one(name, model, calib, a.work.resolve())
        print(f"{name}: {len(got[name])} files", flush=True)
    if a.mode == "record":
        a.file.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
        print(f"recorded {sum(map(len, got.values()))} files of {len(got)} models in {a.file}")
        return 0
    want = json.loads(a.file.read_text())
    bad = 0
    for name in sorted(set(want) | set(got)):
        if only is not None and name not in only:
            continue
        w, g = want.get(name, {}), got.get(name, {})
        for f in sorted(set(w) | set(g)):
            if w.get(f) != g.get(f):
                bad += 1
                print(f"DIFFERS {name}/{f}: {w.get(f, 'absent')[:12]} -> {g.get(f, 'absent')[:12]}")
    n = sum(map(len, got.values()))
    print(f"{n - bad} of {n} files identical" + ("" if bad else ": byte-identical"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
