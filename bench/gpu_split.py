"""Where a fresh-process GPU ``calibkit calibrate`` spends its time, against a plain script.

    python bench/gpu_split.py --models DIR [--which det,rec]

For each model (DIR as for bench/gpu_fresh.py) it runs, in fresh processes: the plain script,
then ``python -m cProfile -m calibkit calibrate --device cuda`` with the default tensors, and
prints calibkit's own summary lines (collect, threshold) and the profile's cumulative times of
the phases (imports, plan, session, collect, thresholds, writing), so the ratio to plain can be
split into what each phase adds.
"""

from __future__ import annotations

import argparse
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

PHASES = [
    ("calibkit/__main__.py", "<module>", "whole CLI"),
    ("calibkit/cli/__init__.py", "<module>", "import calibkit.cli"),
    ("onnxruntime/__init__.py", "<module>", "import onnxruntime"),
    ("calibkit/collect/plan.py", "plan", "plan (shape inference, batch axes)"),
    ("onnxruntime_inference_collection.py", "__init__", "ORT session build"),
    ("calibkit/collect/cuda/driver.py", "collect_device", "GPU collect (session build and runs)"),
    ("calibkit/methods/cuda.py", "amaxes", "thresholds on the GPU"),
    ("calibkit/outputs/publish.py", "commit", "publishing the set"),
]


def main() -> None:
    from gpu import make_images
    from gpu_fresh import PLAIN

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", required=True, type=Path)
    ap.add_argument("--which", default="det,rec")
    a = ap.parse_args()
    specs = {
        "det": ("ch_PP-OCRv4_det_infer.onnx", 64, (640, 640), "imagenet", 8),
        "rec": ("ch_PP-OCRv4_rec_infer.onnx", 512, (48, 320), "half", 64),
    }
    with tempfile.TemporaryDirectory(prefix="calibkit-gpu-split-") as tmp:
        tmp = Path(tmp)
        for key in a.which.split(","):
            name, n, size, norm, batch = specs[key]
            model = a.models / name
            data = make_images(tmp / f"{key}.npy", n, size, 0, norm)
            t = time.perf_counter()
            subprocess.run([sys.executable, "-c", PLAIN, str(model), str(data), str(batch)], check=True)
            plain = time.perf_counter() - t
            prof = tmp / f"{key}.prof"
            cmd = [
                sys.executable,
                "-m",
                "cProfile",
                "-o",
                str(prof),
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
                str(tmp / key),
            ]
            t = time.perf_counter()
            p = subprocess.run(cmd, capture_output=True, text=True, env={"NO_COLOR": "1", **__import__("os").environ})
            wall = time.perf_counter() - t
            if p.returncode:
                raise SystemExit(p.stderr[-2000:])
            print(f"\n== {key}: {n} images, batch {batch}: plain {plain:.2f} s, calibkit (under cProfile) {wall:.2f} s")
            for line in p.stdout.splitlines():
                if line.split()[:1] and line.split()[0] in ("collect", "threshold", "tensors", "run"):
                    print("  calibkit says:", line.strip())
            st = pstats.Stats(str(prof))
            for (file, _line, func), (_cc, _nc, _tt, ct, _callers) in sorted(
                st.stats.items(), key=lambda kv: -kv[1][3]
            ):
                for f, fn, label in PHASES:
                    if file.endswith(f) and func == fn:
                        print(f"  {label:38s} {ct:7.2f} s   ({file.split('site-packages/')[-1]}:{func})")
            print("  top 25 by cumulative time:")
            st.sort_stats("cumulative").print_stats(25)


if __name__ == "__main__":
    main()
