"""calibrate over several GPUs, with and without Ray, in fresh processes (issue 23).

    python3 bench/gpu_ray.py --models DIR [--det-images 1024,8192] [--rec-images 4096]
                             [--modes one,all,all-ray] [--repeat 1] [--log bench/gpu_ray.TAG.log]
    python3 bench/gpu_ray.py --cpu --models DIR      reduced CPU-only run (no GPU): proves the checks

DIR holds ch_PP-OCRv4_det_infer.onnx and ch_PP-OCRv4_rec_infer.onnx (the corpus models
ppocrv4_det / ppocrv4_rec). Inputs are bench/gpu.py's generated images saved as .npy (detector
3x640x640 ImageNet-normalised, recognizer 3x48x320 in [-1, 1]), one file per count (so no run
hashes samples it does not use). Every row is one fresh ``python -m calibkit calibrate MODEL
--data X.npy --batch-size B -o DIR`` process (or a chain of them), timed spawn to exit, with:

    one       --devices 0                       the baseline every other row is compared with
    one-ray   --devices 0 --ray auto            one Ray actor of one GPU (a local cluster per run)
    all       --devices all                     one spawned process per GPU
    all-ray   --devices all --ray auto          one Ray actor per GPU
  --cpu (no GPU here, nothing to shard over; the same checks and log):
    cpu         --device cpu                    the baseline
    cpu-shards  the data cut as --devices cuts it over 2 GPUs (collect.sharded.shard_ranges), each
                shard calibrated by its own process one after the other, then ``calibkit merge``
                and ``calibrate --histograms``: the computation --devices does, in CPU processes
                (one after the other: its efficiency is against one process, not two)
    cpu-minmax  --device cpu --method minmax: a control whose cache must DIFFER (proves the check)

Start-up is measured apart: the same row on a file of (GPUs x batch) samples, one run batch per
GPU, stands for the fixed cost (imports, sessions, CUDA contexts, worker processes, the Ray
cluster). Scaling efficiency = T_one / (G x T_row) end to end, and after start-up
(T_one - S_one) / (G x (T_row - S_row)). Where a row is slower than one GPU the line gives the
break-even from the two linear fits T = S + n c: n* = (S_row - S_one) / (c_one - c_row).
Peak memory: every GPU's memory.used (nvidia-smi, polled every 50 ms) above its level before the
process, per GPU; with --cpu the process's peak RSS (wait4). Every cache (``<model>.cache``) is
compared byte for byte with the baseline's of the same count and batch; a difference exits 1
after the log is written. The log (--log) holds everything printed, under a header naming the
machine, the commit and the command.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))

GPU_MODES = {
    "one": ["--devices", "0"],
    "one-ray": ["--devices", "0", "--ray", "auto"],
    "all": ["--devices", "all"],
    "all-ray": ["--devices", "all", "--ray", "auto"],
}
CPU_MODES = ("cpu", "cpu-shards", "cpu-minmax")
CONTROLS = {"cpu-minmax"}  # rows whose cache must differ: they prove the check can fail
CPU_SHARDS = 2  # cpu-shards cuts the data as --devices would over this many GPUs


class Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.append(text)


def gpu_used_mb() -> list[float]:
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"], capture_output=True, text=True
    ).stdout
    return [float(x) for x in out.split()]


def fresh(cmd: list[str], gpus: int) -> tuple[float, list[float], float]:
    """(wall s, peak MB above idle per GPU, peak RSS MB of the process) of one fresh process."""
    idle = gpu_used_mb() if gpus else []
    peak = list(idle)
    stop = threading.Event()

    def poll():
        while not stop.is_set():
            peak[:] = [max(a, b) for a, b in zip(peak, gpu_used_mb())]
            time.sleep(0.05)

    th = threading.Thread(target=poll, daemon=True)
    if gpus:
        th.start()
    env = {**os.environ, "NO_COLOR": "1"}
    env.pop("RAY_ADDRESS", None)  # --ray auto: a local cluster for the run
    with tempfile.TemporaryFile("w+") as fo, tempfile.TemporaryFile("w+") as fe:
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=fo, stderr=fe, text=True, env=env)
        _, status, usage = os.wait4(proc.pid, 0)  # this process's own peak RSS, not its siblings'
        wall = time.perf_counter() - t
        proc.returncode = os.waitstatus_to_exitcode(status)
        fo.seek(0)
        fe.seek(0)
        out, err = fo.read(), fe.read()
    stop.set()
    if gpus:
        th.join()
    if proc.returncode != 0:
        raise SystemExit(f"{shlex.join(cmd)} failed (exit {proc.returncode}):\n{out[-2000:]}\n{err[-3000:]}")
    return wall, [p - i for p, i in zip(peak, idle)], usage.ru_maxrss / 1024


def calibkit(*args) -> list[str]:
    return [sys.executable, "-m", "calibkit", *map(str, args)]


def run_row(mode: str, model: Path, data: Path, batch: int, out: Path, gpus: int, device: str) -> dict:
    """One row: its processes, wall time (summed over a chain), peaks, and the cache bytes."""
    base = ["calibrate", model, "--data", data, "--batch-size", batch]
    if mode in GPU_MODES:
        chain = [calibkit(*base, *GPU_MODES[mode], "-o", out)]
    elif mode == "cpu":
        chain = [calibkit(*base, "--device", device, "-o", out)]
    elif mode == "cpu-minmax":
        chain = [calibkit(*base, "--device", device, "--method", "minmax", "-o", out)]
    elif mode == "cpu-shards":
        import numpy as np

        from calibkit.collect.sharded import shard_ranges

        x = np.load(data, mmap_mode="r")
        chain, parts = [], []
        for i, (lo, hi) in enumerate(shard_ranges(len(x), batch, CPU_SHARDS)):
            part = out.parent / f"{out.name}.s{i}.npy"
            np.save(part, x[lo:hi])  # written before the clock starts: data in files, as a user has it
            chain.append(
                calibkit(
                    "calibrate",
                    model,
                    "--data",
                    part,
                    "--batch-size",
                    batch,
                    "--device",
                    device,
                    "-o",
                    out.parent / f"{out.name}.s{i}",
                )
            )
            parts.append(out.parent / f"{out.name}.s{i}" / "histograms.npz")
        chain.append(calibkit("merge", *parts, "-o", out.parent / f"{out.name}.merged.npz"))
        chain.append(calibkit("calibrate", model, "--histograms", out.parent / f"{out.name}.merged.npz", "-o", out))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    wall, peaks, rss = 0.0, [0.0] * gpus, 0.0
    for cmd in chain:
        w, p, r = fresh(cmd, gpus)
        wall += w
        peaks = [max(a, b) for a, b in zip(peaks, p)]
        rss = max(rss, r)
    return {"wall": wall, "peaks": peaks, "rss": rss, "cache": (out / f"{model.stem}.cache").read_bytes()}


def case(
    log: Log,
    title: str,
    model: Path,
    data: Path,
    small: Path,
    batch: int,
    modes: list[str],
    shards: dict,
    gpus: int,
    repeat: int,
    tmp: Path,
    device: str,
) -> bool:
    """Rows of one model and count; True when every cache equals the baseline's."""
    import numpy as np

    n, n0 = len(np.load(data, mmap_mode="r")), len(np.load(small, mmap_mode="r"))
    got: dict[str, list[dict]] = {m: [] for m in modes}
    start: dict[str, list[dict]] = {m: [] for m in modes}
    for r in range(repeat):
        for m in modes:  # interleaved, so drift hits every row alike
            got[m].append(run_row(m, model, data, batch, tmp / f"{model.stem}-{n}-{m}-{r}", gpus, device))
            start[m].append(run_row(m, model, small, batch, tmp / f"{model.stem}-{n0}-{m}-{r}", gpus, device))
    base = modes[0]
    log(f"\n== {title}: {n} samples, --batch-size {batch}; start-up row on {n0} samples; median of {repeat}")
    t1 = statistics.median(x["wall"] for x in got[base])
    s1 = statistics.median(x["wall"] for x in start[base])
    same = True
    for m in modes:
        t = statistics.median(x["wall"] for x in got[m])
        s = statistics.median(x["wall"] for x in start[m])
        g = shards[m]
        ident = all(x["cache"] == got[base][0]["cache"] for x in got[m]) and all(
            x["cache"] == start[base][0]["cache"] for x in start[m]
        )
        same &= ident != (m in CONTROLS)
        mem = " ".join(
            f"GPU{i} {p / 1024:.2f}" for i, p in enumerate(max(x["peaks"][j] for x in got[m]) for j in range(gpus))
        )
        mem = f"peak GB above idle: {mem}" if gpus else f"peak RSS {max(x['rss'] for x in got[m]):.0f} MB"
        line = f"  {m:10s} {t:7.2f} s  start-up {s:6.2f} s  after start-up {t - s:7.2f} s  {mem}"
        if m != base and m not in CONTROLS:
            line += f"  | x{t1 / t:.2f} vs {base}; efficiency over {g}: {t1 / (g * t):.0%} end to end, "
            if t > s and t1 > s1:
                line += f"{(t1 - s1) / (g * (t - s)):.0%} after start-up"
                c1, cm = (t1 - s1) / (n - n0), (t - s) / (n - n0)
                if g > 1 and s > s1 and c1 > cm:  # more start-up, less per sample: where it wins
                    line += f"; break-even ~{n0 + (s - s1) / (c1 - cm):.0f} samples"
            else:  # the start-up row took as long as the whole: noise larger than the work
                line += "after start-up n/a (start-up row >= whole run: noise)"
        line += f"  cache {'byte-identical to ' + base if ident else 'DIFFERS from ' + base}"
        if m in CONTROLS:
            line += f" ({'as it must: a control' if not ident else 'BUT IT MUST NOT: the check is broken'})"
        log(line)
        runs = " ".join(f"{x['wall']:.2f}" for x in got[m])
        starts = " ".join(f"{x['wall']:.2f}" for x in start[m])
        log(f"  {'':10s} runs {runs}; start-up runs {starts}")
    return same


def header(log: Log, a, gpus: int) -> None:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    if a.cpu:
        log("# CPU ONLY: a reduced run on a machine WITHOUT a GPU. It proves the bench's byte-identity")
        log("# check, its timing and its log; its times say nothing about GPUs or Ray on GPUs.")
        log(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores visible (shared), {when}")
    else:
        names = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.strip()
        log(f"# {gpus} GPU(s), {os.cpu_count()} cores, {when}")
        for line in names.splitlines():
            log(f"# {line}")
    log(
        f"# commit {commit}{' + uncommitted changes' if dirty else ''}; command: python3 bench/gpu_ray.py {shlex.join(sys.argv[1:])}"
    )
    vers = []
    for mod in ("onnxruntime", "ray", "numpy"):
        try:
            m = __import__(mod)
            vers.append(f"{mod} {m.__version__}")
        except ImportError:
            vers.append(f"{mod} absent")
    import onnxruntime as ort

    log(f"# Python {platform.python_version()}; {', '.join(vers)}; providers {ort.get_available_providers()}")


def main(argv=None) -> int:
    from gpu import make_images

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", required=True, type=Path)
    ap.add_argument("--det-images", default="1024", help="comma-separated counts (0: no detector rows)")
    ap.add_argument("--rec-images", default="4096", help="comma-separated counts (0: no recognizer rows)")
    ap.add_argument("--det-batch", type=int, default=8)
    ap.add_argument("--rec-batch", type=int, default=64)
    ap.add_argument("--det-size", type=int, default=640, help="detector images are SIZE x SIZE")
    ap.add_argument(
        "--modes", help="rows, the first is the baseline (default: one,all,all-ray with 2+ GPUs, else one,one-ray)"
    )
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--cpu", action="store_true", help="no GPU: rows cpu,cpu-shards (a reduced check of the bench)")
    ap.add_argument("--tmp", type=Path, help="where the .npy files and outputs go (default: a temporary folder)")
    ap.add_argument("--log", type=Path, help="write everything printed here too")
    a = ap.parse_args(argv)
    from calibkit.sessions import cuda_device_count

    gpus = 0 if a.cpu else cuda_device_count()
    if not a.cpu and gpus == 0:
        raise SystemExit("no CUDA device visible: run with --cpu for the reduced CPU check")
    modes = (a.modes or (",".join(CPU_MODES) if a.cpu else "one,all,all-ray" if gpus >= 2 else "one,one-ray")).split(
        ","
    )
    shards = {m: gpus if m in ("all", "all-ray") else 1 for m in modes}  # processes working at once
    log = Log()
    header(log, a, gpus)
    det = next(a.models.rglob("ch_PP-OCRv4_det_infer.onnx"))
    rec = next(a.models.rglob("ch_PP-OCRv4_rec_infer.onnx"))
    device = "cpu"
    ok = True
    with tempfile.TemporaryDirectory(prefix="calibkit-gpu-ray-", dir=a.tmp) as tmp:
        tmp = Path(tmp)
        g = CPU_SHARDS if a.cpu else max(shards.values())  # one run batch per shard at start-up
        for model, counts, batch, hw, norm, seed, title in (
            (
                det,
                a.det_images,
                a.det_batch,
                (a.det_size, a.det_size),
                "imagenet",
                0,
                f"PP-OCRv4 det 3x{a.det_size}x{a.det_size}",
            ),
            (rec, a.rec_images, a.rec_batch, (48, 320), "half", 2, "PP-OCRv4 rec 3x48x320"),
        ):
            counts = [int(c) for c in counts.split(",") if int(c)]
            if not counts:
                continue
            small = make_images(tmp / f"{model.stem}-start.npy", g * batch, hw, seed + 100, norm)
            for n in counts:
                data = make_images(tmp / f"{model.stem}-{n}.npy", n, hw, seed, norm)
                ok &= case(log, title, model, data, small, batch, modes, shards, gpus, a.repeat, tmp, device)
                data.unlink()  # 8192 detector images are 40 GB
    same = [m for m in modes if m not in CONTROLS]
    control = f"; control rows {', '.join(m for m in modes if m in CONTROLS)} differ" if len(same) < len(modes) else ""
    log(
        f"\nRESULT caches {'byte-identical across ' + ', '.join(same) + control if ok else 'WRONG: see the lines above'}"
    )
    if a.log:
        a.log.write_text("\n".join(log.lines) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
