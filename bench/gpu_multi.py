"""--devices on a machine with several GPUs, through the real CLI (issue 8, part 4).

    python bench/gpu_multi.py --models DIR [--images 512] [--batch 8]

Calibrates the PP-OCRv4 detector (640x640 generated images, .npy) three ways at the same run
batch: one GPU (``--devices 0``), all GPUs (``--devices all``: one process per GPU), and the
same shards calibrated one after the other on GPU 0, merged with ``calibkit merge`` and
re-thresholded; prints the wall times and whether the caches are byte-identical.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpu import make_images  # noqa: E402

from calibkit.collect.sharded import shard_ranges  # noqa: E402
from calibkit.sessions import cuda_device_count  # noqa: E402


def cli(*args) -> float:
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "calibkit", *map(str, args)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"calibkit {' '.join(map(str, args))} failed:\n{proc.stdout}\n{proc.stderr}")
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", required=True, type=Path)
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--batch", type=int, default=8)
    a = ap.parse_args()
    n_gpu = cuda_device_count()
    print(subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.strip())
    det = next(a.models.rglob("ch_PP-OCRv4_det_infer.onnx"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = make_images(tmp / "x.npy", a.images, (640, 640), 3, "imagenet")
        b = str(a.batch)
        t_one = cli("calibrate", det, "--data", data, "--batch-size", b, "--devices", "0", "-o", tmp / "one")
        t_all = cli("calibrate", det, "--data", data, "--batch-size", b, "--devices", "all", "-o", tmp / "all")
        x = np.load(data, mmap_mode="r")
        parts = []
        t_shards = 0.0
        for i, (lo, hi) in enumerate(shard_ranges(a.images, a.batch, n_gpu)):
            np.save(tmp / f"s{i}.npy", x[lo:hi])
            t_shards += cli(
                "calibrate", det, "--data", tmp / f"s{i}.npy", "--batch-size", b, "--devices", "0", "-o", tmp / f"s{i}"
            )
            parts.append(tmp / f"s{i}" / "histograms.npz")
        cli("merge", *parts, "-o", tmp / "merged.npz")
        cli("calibrate", det, "--histograms", tmp / "merged.npz", "-o", tmp / "merged")
        cache = det.stem + ".cache"
        one, every, merged = ((tmp / d / cache).read_bytes() for d in ("one", "all", "merged"))
        print(f"{n_gpu} GPUs, {a.images} images 3x640x640, --batch-size {a.batch}")
        print(f"--devices 0:   {t_one:.2f} s end to end (CLI process)")
        print(f"--devices all: {t_all:.2f} s end to end (CLI process, {n_gpu} worker processes)")
        print(f"shards {shard_ranges(a.images, a.batch, n_gpu)} one after the other on GPU 0: {t_shards:.2f} s, merged")
        print(f"cache --devices all vs shards merged on one GPU: {'byte-identical' if every == merged else 'DIFFER'}")
        print(
            f"cache --devices all vs --devices 0 (whole set, one GPU): {'byte-identical' if every == one else 'DIFFER'}"
        )
        try:
            import ray  # noqa: F401
        except ImportError:
            print("--devices all --ray auto: not run (Ray is not installed here)")
            return
        t_ray = cli(
            "calibrate", det, "--data", data, "--batch-size", b, "--devices", "all", "--ray", "auto", "-o", tmp / "ray"
        )
        on_ray = (tmp / "ray" / cache).read_bytes()
        print(
            f"--devices all --ray auto: {t_ray:.2f} s end to end; cache vs shards merged: {'byte-identical' if on_ray == merged else 'DIFFER'}"
        )


if __name__ == "__main__":
    main()
