"""calibkit calibrate vs a plain ORT inference script, end to end in fresh processes (CPU).

    nice -n 10 python bench/calibrate_cpu.py                       # anchor + PP-OCRv4 det + demo
    nice -n 10 python bench/calibrate_cpu.py --repeat 5 --only det

Every row is a fresh process, timed from spawn to exit (interpreter start, imports, session,
inference, writing), with its own peak RSS (os.wait4). The plain script imports onnxruntime and
numpy, loads the same .npz, builds its session and runs every sample in batches of 8. calibkit
runs the real CLI (``python -m calibkit calibrate``) with --tensors trt (the default), qdq and
all. Each contender runs ``--repeat`` times, interleaved, and the median is reported: the machine
is shared, so ratios come from the same run. RSS flat in samples: the default at N and 4N.

Start-up: the bare demo (``python -m calibkit calibrate``) against ``python -c "import
onnxruntime, numpy"``, and ``import onnx`` alone (calibkit needs it to read the model).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

PLAIN = r"""
import sys
import numpy as np
import onnxruntime as ort
model, data, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
z = np.load(data)
opts = ort.SessionOptions()
opts.log_severity_level = 3
sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
feeds = {k: z[k] for k in z.files}
n = len(next(iter(feeds.values())))
for s in range(0, n, batch):
    sess.run(None, {k: v[s : s + batch] for k, v in feeds.items()})
"""


def fresh(cmd: list[str], cwd: Path) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of one fresh process."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "NO_COLOR": "1"}
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed:\n{err[-2000:]}")
    return wall, usage.ru_maxrss / 1024


def calibkit_cmd(model: Path, data: Path, out: Path, tensors: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "calibkit",
        "calibrate",
        str(model),
        "--data",
        str(data),
        "-o",
        str(out),
        "--recollect",
        "--device",
        "cpu",
        "--tensors",
        tensors,
    ]


def scenario(name: str, model: Path, data: Path, data4: Path | None, tmp: Path, repeat: int) -> dict:
    rows = {
        "plain": [sys.executable, "-c", PLAIN, str(model), str(data), "8"],
        "calibkit trt": calibkit_cmd(model, data, tmp / f"{name}-trt", "trt"),
        "calibkit qdq": calibkit_cmd(model, data, tmp / f"{name}-qdq", "qdq"),
        "calibkit all": calibkit_cmd(model, data, tmp / f"{name}-all", "all"),
    }
    if data4 is not None:
        rows["plain 4N"] = [sys.executable, "-c", PLAIN, str(model), str(data4), "8"]
        rows["calibkit trt 4N"] = calibkit_cmd(model, data4, tmp / f"{name}-trt4", "trt")
    got: dict[str, list[tuple[float, float]]] = {k: [] for k in rows}
    for _ in range(repeat):
        for k, cmd in rows.items():
            got[k].append(fresh(cmd, tmp))
    med = {k: (statistics.median(w for w, _ in v), max(r for _, r in v)) for k, v in got.items()}
    print(
        f"\n{name}: median of {repeat} fresh processes (wall s, peak RSS MB); runs: "
        + "; ".join(f"{k} " + " ".join(f"{w:.2f}" for w, _ in v) for k, v in got.items())
    )
    for k, (w, r) in med.items():
        print(f"  {k:16s} {w:7.2f} s  {r:7.0f} MB")
    plain = med["plain"][0]
    print("  ratios to plain (target):")
    print(f"    default (--tensors trt)   {med['calibkit trt'][0] / plain:5.2f}x  (<= 3x)")
    print(f"    --tensors qdq             {med['calibkit qdq'][0] / plain:5.2f}x  (<= 1.5x)")
    print(f"    --tensors all             {med['calibkit all'][0] / plain:5.2f}x  (today's behaviour)")
    if data4 is not None:
        print(f"    default at 4N / plain 4N  {med['calibkit trt 4N'][0] / med['plain 4N'][0]:5.2f}x")
        print(
            f"    RSS default 4N / N        {med['calibkit trt 4N'][1] / med['calibkit trt'][1]:5.3f}  (flat: <= 1.10)"
        )
    return med


def startup(tmp: Path, repeat: int) -> None:
    rows = {
        "import onnxruntime, numpy": [sys.executable, "-c", "import onnxruntime, numpy"],
        "import onnx": [sys.executable, "-c", "import onnx"],
        "calibkit demo": [sys.executable, "-m", "calibkit", "calibrate", "-o", str(tmp / "demo"), "--recollect"],
    }
    got = {k: [fresh(cmd, tmp)[0] for _ in range(repeat)] for k, cmd in rows.items()}
    med = {k: statistics.median(v) for k, v in got.items()}
    print(f"\nstart-up: median of {repeat} fresh processes")
    for k, v in med.items():
        print(f"  {k:28s} {v:6.2f} s   ({' '.join(f'{x:.2f}' for x in got[k])})")
    base = med["import onnxruntime, numpy"]
    print(f"  demo - bare import            {med['calibkit demo'] - base:6.2f} s  (target <= 1 s)")
    print(f"  of which import onnx alone    {med['import onnx'] - base:6.2f} s  (ml_dtypes; calibkit cannot avoid it)")


def det_data(path: Path, n: int, hw: int = 320, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    x = ((rng.random((n, 3, hw, hw), dtype=np.float32) - 0.5) / 0.25).astype(np.float32)
    np.savez(path, x=x)
    return path


def main() -> None:
    from calibration import make_data, make_model  # bench/calibration.py's generated anchor

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--only", default="anchor,det,startup", help="comma list of anchor, det, startup")
    ap.add_argument("--samples", type=int, default=32, help="anchor samples (4N runs too)")
    ap.add_argument("--det-samples", type=int, default=64)
    a = ap.parse_args()
    only = set(a.only.split(","))
    print(
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start (shared machine), "
        f"python {sys.version.split()[0]}"
    )
    with tempfile.TemporaryDirectory(prefix="calibkit-cpu-bench-") as tmp:
        tmp = Path(tmp)
        if "anchor" in only:
            model = make_model(tmp / "anchor.onnx", channels=16, hw=96)
            d1 = make_data(tmp / "anchor.npz", model, a.samples)
            d4 = make_data(tmp / "anchor4.npz", model, 4 * a.samples)
            scenario(
                f"anchor: generated conv net 16x96x96 (327 tensors), {a.samples} samples", model, d1, d4, tmp, a.repeat
            )
        if "det" in only:
            sys.path.insert(0, str(REPO / "tools"))
            import corpus

            det = corpus.model_path(corpus.cache_dir(), corpus.by_name("ppocrv4_det"))
            if det.exists():
                d = det_data(tmp / "det.npz", a.det_samples)
                scenario(f"PP-OCRv4 det (corpus), {a.det_samples} images 320x320", det, d, None, tmp, a.repeat)
            else:
                print(f"\nPP-OCRv4 det absent ({det}): python tools/corpus.py fetch --only ppocrv4_det")
        if "startup" in only:
            startup(tmp, max(a.repeat, 3))
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
