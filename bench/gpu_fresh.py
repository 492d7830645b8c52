"""calibkit calibrate on the GPU vs a plain inference script: fresh processes, peak GPU memory.

    python bench/gpu_fresh.py --models DIR [--repeat 2] [--big 1024] [--selections trt,qdq,all] [--gpu-memory 3GB,...]

DIR holds ch_PP-OCRv4_det_infer.onnx and ch_PP-OCRv4_rec_infer.onnx. Images are generated once
(bench/gpu.py's make_images) and saved as .npy. Every row is a fresh process timed from spawn
to exit: the plain script imports onnxruntime and numpy, builds a CUDA session and runs the .npy
in batches; calibkit runs its CLI (``python -m calibkit calibrate --device cuda --batch-size B``)
with --tensors trt (default), qdq and all, and a trt row per ``--gpu-memory`` bound. Peak GPU memory is the most nvidia-smi saw in use
during the process (polled every 20 ms) less what was in use before it started. Medians of
``--repeat`` runs; rows interleaved.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

PLAIN = r"""
import sys
import numpy as np
import onnxruntime as ort
model, data, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
x = np.load(data, mmap_mode="r")
opts = ort.SessionOptions()
opts.log_severity_level = 3
sess = ort.InferenceSession(model, opts, providers=["CUDAExecutionProvider"])
name = sess.get_inputs()[0].name
for s in range(0, len(x), batch):
    sess.run(None, {name: np.ascontiguousarray(x[s : s + batch])})
"""


def gpu_used_mb() -> float:
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
        capture_output=True,
        text=True,
    ).stdout
    return float(out.strip().splitlines()[0])


def fresh(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak GPU MB above the idle level) of one fresh process."""
    idle = gpu_used_mb()
    peak = [idle]
    stop = threading.Event()

    def poll():
        while not stop.is_set():
            peak[0] = max(peak[0], gpu_used_mb())
            time.sleep(0.02)

    th = threading.Thread(target=poll, daemon=True)
    th.start()
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "NO_COLOR": "1"})
    wall = time.perf_counter() - t
    stop.set()
    th.join()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return wall, peak[0] - idle


def case(
    title: str, model: Path, data: Path, batch: int, tmp: Path, repeat: int, selections=("trt", "qdq", "all"), bounds=()
) -> None:
    rows = {"plain": [sys.executable, "-c", PLAIN, str(model), str(data), str(batch)]}
    for t in (*selections, *(f"trt --gpu-memory {b}" for b in bounds)):
        t, *bound = t.split(" ", 1)
        rows[" ".join(["calibkit", t, *bound])] = [
            sys.executable,
            "-m",
            "calibkit",
            "calibrate",
            str(model),
            "--data",
            str(data),
            "--batch-size",
            str(batch),
            "--device",
            "cuda",
            "--recollect",
            "-o",
            str(tmp / f"{model.stem}-{t}"),
            "--tensors",
            t,
            *(bound[0].split() if bound else []),
        ]
    got: dict[str, list[tuple[float, float]]] = {k: [] for k in rows}
    failed: dict[str, str] = {}
    for _ in range(repeat):
        for k, cmd in rows.items():
            if k in failed:
                continue
            try:
                got[k].append(fresh(cmd))
            except SystemExit as exc:  # a row that fails (a bound too small) is a result, not the end of the bench
                failed[k] = str(exc).strip().splitlines()[-1][:300]
    print(f"\n== {title}, batch {batch}: median of {repeat} fresh processes", flush=True)
    plain_w = statistics.median(w for w, _ in got["plain"])
    plain_m = max(m for _, m in got["plain"])
    for k, v in got.items():
        if k in failed:
            print(f"  {k:30s} failed: {failed[k]}", flush=True)
            continue
        w = statistics.median(x for x, _ in v)
        m = max(x for _, x in v)
        runs = " ".join(f"{x:.2f}" for x, _ in v)
        extra = "" if k == "plain" else f"  {w / plain_w:5.2f}x plain time, +{(m - plain_m) / 1024:5.2f} GB over plain"
        print(f"  {k:30s} {w:6.2f} s  peak GPU {m / 1024:6.2f} GB{extra}   (runs {runs})", flush=True)


def main() -> None:
    from gpu import make_images

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", required=True, type=Path)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--big", type=int, default=1024)
    ap.add_argument("--selections", default="trt,qdq,all", help="--tensors rows")
    ap.add_argument("--gpu-memory", default="", help="comma-separated --gpu-memory bounds: a trt row each")
    a = ap.parse_args()
    kw = {
        "selections": tuple(filter(None, a.selections.split(","))),
        "bounds": tuple(filter(None, a.gpu_memory.split(","))),
    }
    import onnxruntime as ort

    name = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True)
    print(f"onnxruntime {ort.__version__} {ort.get_available_providers()}; GPU {name.stdout.strip()}")
    det = a.models / "ch_PP-OCRv4_det_infer.onnx"
    rec = a.models / "ch_PP-OCRv4_rec_infer.onnx"
    with tempfile.TemporaryDirectory(prefix="calibkit-gpu-fresh-") as tmp:
        tmp = Path(tmp)
        d64 = make_images(tmp / "det64.npy", 64, (640, 640), 0, "imagenet")
        case("detector: 64 images 3x640x640", det, d64, 8, tmp, a.repeat, **kw)
        if a.big:
            dbig = make_images(tmp / "detbig.npy", a.big, (640, 640), 1, "imagenet")
            case(f"detector: {a.big} images 3x640x640", det, dbig, 8, tmp, a.repeat, **kw)
        r512 = make_images(tmp / "rec512.npy", 512, (48, 320), 2, "half")
        case("recognizer: 512 images 3x48x320", rec, r512, 64, tmp, a.repeat, **kw)


if __name__ == "__main__":
    main()
