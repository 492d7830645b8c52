"""GPU calibration vs plain inference, in one process on the GPU machine (issue 8).

    python bench/gpu.py --models DIR [--big 1024] [--skip-host-check]

DIR holds ch_PP-OCRv4_det_infer.onnx and ch_PP-OCRv4_rec_infer.onnx (the corpus's ppocrv4_det
and ppocrv4_rec). Images are generated in-process (deterministic) and saved as .npy; the plain
script and calibkit read the same file the same way (np.load mmap, 64 samples a read).

For each case it prints: plain inference per run (input on the device), the same model with
every activation exposed and bound on the device, calibkit's collect phase per run, the
thresholds (all four methods, GPU batched vs host, with a check that every tensor's amax is
equal), and end to end (``calibrate``) vs a plain-inference script over the same data.
Fresh processes with peak GPU memory and each --tensors selection: bench/gpu_fresh.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from calibkit import methods  # noqa: E402
from calibkit.artifacts.histograms import HistogramSet  # noqa: E402
from calibkit.artifacts.scales import compute  # noqa: E402
from calibkit.calibration import calibrate  # noqa: E402
from calibkit.collect.cuda.driver import ORT_TYPES, DeviceCollector, drive  # noqa: E402
from calibkit.collect.plan import plan  # noqa: E402
from calibkit.data import Batch, IterableSource  # noqa: E402
from calibkit.data.prefetch import PinnedStager  # noqa: E402
from calibkit.graph.model import input_specs, load  # noqa: E402

MEAN = np.array([0.485, 0.456, 0.406], np.float32).reshape(1, 3, 1, 1)
STD = np.array([0.229, 0.224, 0.225], np.float32).reshape(1, 3, 1, 1)


def make_images(path: Path, n: int, hw: tuple[int, int], seed: int, norm: str) -> Path:
    """``n`` 8-bit images [3, H, W]: 8x8-pixel blocks of random colour, pixel noise (+-12 levels)
    and dark strokes, normalised."""
    rng = np.random.default_rng(seed)
    h, w = hw
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, 3, h, w))
    noise = rng.integers(-12, 13, (min(64, n), 3, h, w), dtype=np.int16)
    for s in range(0, n, 64):
        k = min(64, n - s)
        low = rng.integers(0, 256, (k, 3, h // 8, w // 8), dtype=np.int16)
        px = np.repeat(np.repeat(low, 8, axis=2), 8, axis=3) + np.roll(noise[:k], s // 64, axis=3)
        img = np.clip(px, 0, 255).astype(np.float32) / 255.0
        rows = rng.integers(0, h, (k, 6))
        for i in range(k):
            for r in rows[i]:
                img[i, :, r : r + 2, :] *= 0.1
        out[s : s + k] = (img - MEAN) / STD if norm == "imagenet" else (img - 0.5) / 0.5
    out.flush()
    del out
    return path


def ort_session(model: Path, calibkit_opts: bool):
    import onnxruntime as ort

    from calibkit.sessions import session

    if calibkit_opts:
        return session(load(model), device="cuda")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(model), opts, providers=["CUDAExecutionProvider"])


def per_run(fn, runs: int) -> float:
    import cupy as cp

    for _ in range(3):
        fn()
    cp.cuda.Device().synchronize()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        cp.cuda.Device().synchronize()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def bound_run(sess, x, outputs: list[str]):
    """Run with the input on the device and every output bound to device buffers kept."""
    import cupy as cp

    b = sess.io_binding()
    xd = cp.asarray(x)
    b.bind_input("x", "cuda", 0, np.float32, xd.shape, xd.data.ptr)
    for o in outputs:
        b.bind_output(o, "cuda", 0)
    sess.run_with_iobinding(b)
    vals = b.get_outputs()
    keep = {o: cp.empty(tuple(v.shape()), ORT_TYPES[v.data_type()]) for o, v in zip(outputs, vals)}
    b2 = sess.io_binding()
    b2.bind_input("x", "cuda", 0, np.float32, xd.shape, xd.data.ptr)
    for o, a in keep.items():
        b2.bind_output(o, "cuda", 0, a.dtype, a.shape, a.data.ptr)

    def run():
        sess.run_with_iobinding(b2)
        b2.synchronize_outputs()

    return run, keep, xd


def plain_script(model: Path, data: Path, batch: int) -> tuple[float, float]:
    """(whole script incl. session creation, the inference loop alone) over ``data``."""
    t0 = time.perf_counter()
    sess = ort_session(model, calibkit_opts=False)
    t1 = time.perf_counter()
    arr = np.load(data, mmap_mode="r")
    for s in range(0, arr.shape[0], 64):
        chunk = np.asarray(arr[s : s + 64])
        for b in range(0, chunk.shape[0], batch):
            sess.run(None, {"x": chunk[b : b + batch]})
    t2 = time.perf_counter()
    return t2 - t0, t2 - t1


def case(
    name: str,
    model: Path,
    hw,
    samples: int,
    batch: int,
    norm: str,
    tmp: Path,
    res: dict,
    host_check: bool,
    big: int | None,
) -> None:
    import cupy as cp

    print(f"\n== {name}: {samples} images 3x{hw[0]}x{hw[1]}, run batch {batch}", flush=True)
    data = make_images(tmp / f"{name}.npy", samples, hw, 0, norm)
    x = np.load(data, mmap_mode="r")
    r: dict = {}
    # 1. plain inference, input on the device
    plain = {}
    for tag, opts in (("default", False), ("calibkit-opts", True)):
        sess = ort_session(model, opts)
        outs = [o.name for o in sess.get_outputs()]
        run, _, _ = bound_run(sess, np.ascontiguousarray(x[:batch]), outs)
        plain[tag] = per_run(run, 30)
    r["plain_ms"] = {k: v * 1e3 for k, v in plain.items()}
    t_plain = min(plain.values())
    # 2. every activation exposed, bound on the device (calibkit's plan: its session and outputs)
    proto = load(model)
    specs = input_specs(proto)
    first = Batch({"x": np.ascontiguousarray(x[:batch])})
    first.samples = batch
    p, names, _, _ = plan(proto, specs, first, "cuda", 0, model.name, IterableSource([]), None, None, True)
    run, keep, _ = bound_run(p.sess, np.ascontiguousarray(x[:batch]), p.outputs)
    r["exposed_tensors"] = len(p.outputs)
    r["exposed_ms"] = per_run(run, 30) * 1e3
    # 3. the collect phase: DeviceCollector over the data (pinned staging, bound sets, fused reduce)
    stager = PinnedStager(["x"])
    feeds = []
    for s in range(0, samples, batch):
        f = Batch({"x": np.ascontiguousarray(x[s : s + batch])})
        f.samples = f["x"].shape[0]
        feeds.append(f)
    from calibkit.collect.cuda import fused as gpu_fused
    from calibkit.collect.cuda.fused import FusedHistograms

    col = DeviceCollector(p, batch)
    col.run(feeds[0], stager(feeds[0]))  # first run: unbound (learns the shapes, allocates the sets)
    col.run(feeds[1], stager(feeds[1]))  # a bound run: the set's buffers now hold real activations
    col.reduce_stream.synchronize()
    tab = col.sets[0].table if col.sets[0].done is not None else col.sets[-1].table
    nbytes = sum(a.nbytes for a in col.sets[0].outputs.values())
    # 3a. what bounds the reduction: each counting variant, and the floor (every value read once, nothing counted)
    var_ms = {}
    for v in gpu_fused.VARIANTS:
        spare = FusedHistograms(col.hists.names, v)  # same slots, other counts
        spare.reduce(tab)  # the first run decides the ranges: later ones are the steady state
        var_ms[v] = _events(cp, lambda h=spare: h.reduce(tab), 20)
    out = cp.zeros(tab.chunks, cp.uint32)
    floor = gpu_fused.module(cp).get_function("read_floor")
    r["floor_ms"] = _events(
        cp,
        lambda: floor(
            (tab.chunks,), (gpu_fused.THREADS,), (tab.ptr, tab.dtype, tab.c_tensor, tab.c_start, tab.c_len, out)
        ),
        20,
    )
    pair = [cp.empty(nbytes // 4, cp.float32), cp.empty(nbytes // 4, cp.float32)]
    r["d2d_copy_GBps"] = 2 * nbytes / _events(cp, lambda: pair[1].__setitem__(Ellipsis, pair[0]), 10) / 1e6
    pair.clear()
    best = min(var_ms, key=var_ms.get)
    r["variant_ms"], r["variant"] = var_ms, best
    gpu_fused.VARIANT = best
    col = DeviceCollector(p, batch)  # again, counting with the fastest variant
    col.run(feeds[0], stager(feeds[0]))
    t = time.perf_counter()
    for f in feeds:
        stager(f)
    r["stage_ms"] = (time.perf_counter() - t) / len(feeds) * 1e3
    print(
        f"reduce per run over {nbytes / 1e6:.0f} MB: "
        + ", ".join(f"variant {v} {ms:.2f} ms" for v, ms in var_ms.items())
        + f"; read-only floor {r['floor_ms']:.2f} ms ({nbytes / r['floor_ms'] / 1e6:.0f} GB/s; a device copy moves {r['d2d_copy_GBps']:.0f} GB/s)"
        f"; host staging into pinned memory {r['stage_ms']:.2f} ms/run; using variant {best}",
        flush=True,
    )
    stream = feeds * max(1, 32 // len(feeds))
    t = time.perf_counter()
    drive(col, stream, stager)
    col.reduce_stream.synchronize()
    r["collect_ms"] = (time.perf_counter() - t) / len(stream) * 1e3
    r["reduce_only_ms"] = var_ms[best]
    r["activation_MB_per_run"] = nbytes / 1e6
    r["collect_over_plain"] = r["collect_ms"] / (t_plain * 1e3)
    r["serial_ms"] = r["exposed_ms"] + r["reduce_only_ms"]
    print(
        f"plain {plain['default'] * 1e3:.2f} ms/run (calibkit session options {plain['calibkit-opts'] * 1e3:.2f}); "
        f"{len(p.outputs)} exposed, bound {r['exposed_ms']:.2f} ms/run; collect {r['collect_ms']:.2f} ms/run "
        f"(fused reduce alone {r['reduce_only_ms']:.2f} ms over {nbytes / 1e6:.0f} MB) -> {r['collect_over_plain']:.2f}x plain",
        flush=True,
    )
    print(
        f"bounds of collect: exposed inference + reduce, one after the other {r['serial_ms']:.2f} ms "
        f"({r['serial_ms'] / (t_plain * 1e3):.2f}x plain); with the reduce at the read-only floor {r['exposed_ms'] + r['floor_ms']:.2f} ms "
        f"({(r['exposed_ms'] + r['floor_ms']) / (t_plain * 1e3):.2f}x); ORT's exposed outputs alone {r['exposed_ms'] / (t_plain * 1e3):.2f}x",
        flush=True,
    )
    # 4. bit-identity: the fused reducer vs the host reducer on the same activations
    if host_check:
        from calibkit.collect.cuda.fused import host_reference

        run()
        arrays = {k: v for k, v in keep.items() if v.dtype == np.float32}
        fh = FusedHistograms(list(arrays))
        fh.update(arrays)
        fh.update({k: v * 3 for k, v in arrays.items()})  # a second run whose range grows: folds
        dev = fh.to_host()
        host = host_reference({k: v.get() for k, v in arrays.items()})
        for k, v in arrays.items():
            host[k].update((v * 3).get())
        same = sum(1 for k in arrays if _same(dev[k], host[k]))
        r["bit_identical"] = f"{same}/{len(arrays)}"
        print(
            f"fused vs host reducer on the same activations (2 runs, the second x3): {same}/{len(arrays)} tensors bit-identical",
            flush=True,
        )
    # 5. thresholds on the histograms just collected
    hists = col.finish()
    hset = HistogramSet(hists, {})
    th = {}
    for m in methods.names():
        cfg = methods.get(m).config_cls()
        compute(hset, m, cfg, device="cuda")  # warm-up (NVRTC compile, cached afterwards)
        t = time.perf_counter()
        dev = compute(hset, m, cfg, device="cuda")
        t_dev = time.perf_counter() - t
        t = time.perf_counter()
        host = compute(hset, m, cfg, device="cpu")
        t_host = time.perf_counter() - t
        equal = sum(1 for k in hists if dev.tensors[k]["amax"] == host.tensors[k]["amax"])
        from calibkit.methods import cuda as gpu_methods

        resolved = {**gpu_methods.STATS, "kernel_ms": gpu_methods.KERNEL_MS.get(m)} if m in ("entropy", "mse") else {}
        split = {}
        if (
            methods.get(m).cuda is not None
        ):  # what bounds it: the batched amaxes vs the per-tensor statistics every method's table holds
            t = time.perf_counter()
            gpu_methods.amaxes(hists, m, cfg)
            split["amaxes_ms"] = (time.perf_counter() - t) * 1e3
            t = time.perf_counter()
            one = compute(hset, m, cfg, threads=1, device="cuda")
            split["one_thread_ms"] = (time.perf_counter() - t) * 1e3
            assert one.tensors == dev.tensors
        th[m] = {"gpu_ms": t_dev * 1e3, "host_ms": t_host * 1e3, "equal": f"{equal}/{len(hists)}", **resolved, **split}
        note = (
            f" (kernel {resolved['kernel_ms']:.2f} ms; {resolved['resolved']} tensors with near-ties decided on the host, "
            f"{resolved['exact_calls']} exact evaluations in {resolved['exact_ms']:.1f} ms)"
            if resolved
            else ""
        )
        if split:
            note += (
                f"; the batched amaxes alone {split['amaxes_ms']:.1f} ms, the rest is per-tensor statistics on the host "
                f"(clipped fraction, expected MSE); the same with 1 thread {split['one_thread_ms']:.1f} ms"
            )
        else:
            note += " (not a GPU-batched method: runs on the host)"
        print(
            f"thresholds {m:10s}: GPU {t_dev * 1e3:7.1f} ms, host {t_host * 1e3:7.1f} ms, amax equal on {equal}/{len(hists)} tensors{note}",
            flush=True,
        )
    r["thresholds"] = th
    # 6. end to end vs a plain script over the same data (the same process: CUDA already up)
    for n, path in [(samples, data)] + ([(big, make_images(tmp / f"{name}_big.npy", big, hw, 1, norm))] if big else []):
        script, loop = plain_script(model, path, batch)
        t = time.perf_counter()
        out = calibrate(
            model, data=str(path), output_dir=tmp / f"out_{name}_{n}", batch_size=batch, device="cuda", recollect=True
        )
        total = time.perf_counter() - t
        r[f"end_to_end_{n}"] = {
            "calibkit_s": total,
            "collect_s": out.timings["collect"],
            "threshold_s": out.timings["threshold"],
            "plain_script_s": script,
            "plain_loop_s": loop,
            "ratio_script": total / script,
            "ratio_loop": total / loop,
        }
        print(
            f"end to end {n} images: calibkit {total:.2f} s (collect {out.timings['collect']:.2f}, thresholds {out.timings['threshold']:.3f}) vs "
            f"plain script {script:.2f} s (loop alone {loop:.2f}) -> {total / script:.2f}x ({total / loop:.2f}x the loop)",
            flush=True,
        )
        path.unlink() if path != data else None
    res[name] = r


def _events(cp, fn, n: int) -> float:
    """Mean device time (ms) of ``fn`` over ``n`` calls, after one warm-up."""
    fn()
    ev0, ev1 = cp.cuda.Event(), cp.cuda.Event()
    ev0.record()
    for _ in range(n):
        fn()
    ev1.record()
    ev1.synchronize()
    return cp.cuda.get_elapsed_time(ev0, ev1) / n


def _same(a, b) -> bool:
    return (
        a.exp == b.exp
        and a.count == b.count
        and a.nan == b.nan
        and a.inf == b.inf
        and a.min == b.min
        and a.max == b.max
        and np.array_equal(a.counts, b.counts)
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", required=True, type=Path)
    ap.add_argument("--big", type=int, default=1024, help="detector images for the large end-to-end case (0: skip)")
    ap.add_argument("--skip-host-check", action="store_true")
    a = ap.parse_args()
    import cupy as cp
    import onnxruntime as ort

    print(
        f"onnxruntime {ort.__version__} {ort.get_available_providers()}; CuPy {cp.__version__}; "
        f"GPU {cp.cuda.runtime.getDeviceProperties(0)['name'].decode()}",
        flush=True,
    )
    det = next(a.models.rglob("ch_PP-OCRv4_det_infer.onnx"))
    rec = next(a.models.rglob("ch_PP-OCRv4_rec_infer.onnx"))
    res: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        case("detector", det, (640, 640), 64, 8, "imagenet", tmp, res, not a.skip_host_check, a.big or None)
        case("recognizer", rec, (48, 320), 512, 64, "half", tmp, res, not a.skip_host_check, None)
    print(
        "\nSUMMARY (targets: collect <= 1.5x plain per run; all thresholds <= 50 ms; end to end 1024 images <= 2x plain script)"
    )
    for name, r in res.items():
        th = max(v["gpu_ms"] for v in r["thresholds"].values())
        e2e = {k: round(v["ratio_script"], 2) for k, v in r.items() if k.startswith("end_to_end")}
        print(
            f"{name}: collect/plain {r['collect_over_plain']:.2f}x; slowest threshold {th:.1f} ms "
            f"({r['exposed_tensors']} tensors); end to end / plain script {e2e}"
        )
    print("RESULT " + json.dumps(res, default=str))


if __name__ == "__main__":
    main()
