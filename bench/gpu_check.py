"""GPU run of calibkit (the device machine; needs onnxruntime-gpu).

    python bench/gpu_check.py [--samples 256]

Checks that provider choice picks CUDA when a GPU is usable, times collection on CUDA vs
CPU on the generated conv net and the demo, compares the caches the two providers give, and
validates the demo with FP16 on the CUDA provider (real FP16, not the CPU path).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import calibration as bench  # noqa: E402

from calibkit import demo
from calibkit.artifacts import trt_cache as cache  # noqa: E402
from calibkit.calibration import calibrate  # noqa: E402
from calibkit.data import Preprocess  # noqa: E402
from calibkit.sessions import cuda_device_count, providers_for  # noqa: E402


def plain(model: Path, data: Path, device: str, batch: int = 32) -> float:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(model), opts, providers=providers_for(device))
    x = np.load(data)["input"]
    sess.run(None, {"input": x[:batch]})  # warm-up (CUDA context, cuDNN autotune)
    t = time.perf_counter()
    for s in range(0, len(x), batch):
        sess.run(None, {"input": x[s : s + batch]})
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--channels", type=int, default=48)
    a = ap.parse_args()
    import onnxruntime as ort

    print(f"onnxruntime {ort.__version__}, built providers {ort.get_available_providers()}")
    print(f"CUDA devices seen by the driver: {cuda_device_count()}; providers_for('auto') = {providers_for('auto')}")
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = bench.make_model(tmp / "bench.onnx", channels=a.channels)
        data = bench.make_data(tmp / "data.npz", model, a.samples)
        for device in ("cpu", "cuda"):
            t_plain = plain(model, data, device)
            t = time.perf_counter()
            r = calibrate(model, data=str(data), output_dir=tmp / device, device=device, recollect=True)
            total = time.perf_counter() - t
            out[device] = {
                "plain_s": t_plain,
                "calibkit_s": total,
                "collect_s": r.timings["collect"],
                "providers": r.collection.providers,
                "run_batch": r.collection.stats.run_batch,
            }
            print(
                f"{device}: plain inference {t_plain:.2f} s, calibkit entropy end to end {total:.2f} s "
                f"(collect {r.timings['collect']:.2f} s, run batch {r.collection.stats.run_batch}) -> {total / t_plain:.1f}x; providers {r.collection.providers}"
            )
        a_cpu, a_gpu = cache.read(tmp / "cpu/bench.cache").scales, cache.read(tmp / "cuda/bench.cache").scales
        diff = [abs(a_gpu[k] / a_cpu[k] - 1) for k in a_cpu]
        same = sum(1 for k in a_cpu if a_cpu[k] == a_gpu[k])
        print(f"caches CPU vs CUDA: {same}/{len(a_cpu)} scales bit-identical, max relative difference {max(diff):.2e}")
        out.update(cache_identical=same, cache_tensors=len(a_cpu), cache_max_rel_diff=max(diff))

        def cuda_cache(tag, **kw):
            return (
                calibrate(model, output_dir=tmp / tag, device="cuda", recollect=True, **kw)
                .outputs["cache"]
                .read_bytes()
            )

        # the GPU reducer against the host reducer on the same CUDA activations
        from calibkit.collect.cuda import driver as gpu_driver

        real = gpu_driver.available
        gpu_driver.available = lambda: False
        t = time.perf_counter()
        host_reduced = cuda_cache("cuda_host", data=str(data))
        t_host = time.perf_counter() - t
        gpu_driver.available = real
        print(
            f"CUDA, host reducer: {t_host:.2f} s; caches GPU-reduced vs host-reduced: {'byte-identical' if host_reduced == cuda_cache('cuda', data=str(data)) else 'DIFFER'}"
        )
        out["gpu_vs_host_reducer_identical"] = host_reduced == cuda_cache("cuda_again", data=str(data))
        out["cuda_host_reducer_s"] = t_host
        # shards + padding: same cache as the whole set, any chunking
        x = np.load(data)["input"]
        np.savez(tmp / "s0.npz", input=x[:100])
        np.savez(tmp / "s1.npz", input=x[100:])
        from calibkit.artifacts import histograms as store

        calibrate(model, data=str(tmp / "s0.npz"), output_dir=tmp / "s0", device="cuda")
        calibrate(model, data=str(tmp / "s1.npz"), output_dir=tmp / "s1", device="cuda")
        merged = store.merge_files([tmp / "s1/histograms.npz", tmp / "s0/histograms.npz"])
        store.save(merged, tmp / "merged.npz")
        shards = (
            calibrate(model, histograms=tmp / "merged.npz", output_dir=tmp / "merged").outputs["cache"].read_bytes()
        )
        whole = (tmp / "cuda/bench.cache").read_bytes()
        print(f"CUDA shards 100+156 merged vs whole set: caches {'byte-identical' if shards == whole else 'DIFFER'}")
        out["cuda_shards_identical"] = shards == whole
        b8, b32 = cuda_cache("cuda8", data=str(data), batch_size=8), whole
        print(
            f"CUDA --batch-size 8 vs 32: caches {'byte-identical' if b8 == b32 else 'differ (GPU kernels round differently per batch shape)'}"
        )
        out["cuda_batch_invariant"] = b8 == b32
        from calibkit.validate import validate

        pre = Preprocess.from_file(demo.PREPROCESS)
        calibrate(demo.MODEL, demo.CALIB, preprocess=pre, output_dir=tmp / "demo", device="cuda")
        res = validate(
            demo.MODEL,
            tmp / "demo/scales.json",
            demo.VAL,
            labels=str(demo.VAL / "labels.npy"),
            backends=["ort-int8", "ort-fp16"],
            report=tmp / "demo/report.html",
            preprocess=pre,
            device="cuda",
        )
        for c in res.doc["candidates"]:
            print(
                f"demo {c['label']:22s} accuracy {c['accuracy']:.2f}%  logits SQNR {c['outputs'].get('logits', {}).get('sqnr_db', '-')}  ({c['note']})"
            )
        out["demo"] = [{k: c[k] for k in ("label", "accuracy", "note")} for c in res.doc["candidates"]]
        out["gpu"] = res.doc["environment"]["gpu"]
    print("RESULT " + json.dumps(out, default=str))


if __name__ == "__main__":
    main()
