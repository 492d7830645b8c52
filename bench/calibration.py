"""Calibration benchmark: calibkit vs plain ORT inference vs ORT's own calibrators.

    python bench/calibration.py                     # generated conv net, >= 300 activation tensors
    python bench/calibration.py --samples 128 --batch 16
    python bench/calibration.py --model m.onnx --data calib.npz

Every contender runs in its own process (so peak RSS is its own), on the same model and
data, in this one run; the script prints wall time, peak RSS and ratios to the anchors.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def make_model(path: Path, blocks: int = 100, channels: int = 16, hw: int = 32, seed: int = 0) -> Path:
    """Conv -> BatchNormalization -> Relu blocks (3 activation tensors each), residual every 4."""
    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def init(name, arr):
        inits.append(numpy_helper.from_array(arr.astype(np.float32), name))
        return name

    x = "input"
    cin = 3
    skip = None
    for i in range(blocks):
        w = init(f"w{i}", rng.normal(0, np.sqrt(2.0 / (9 * cin)), (channels, cin, 3, 3)))
        nodes.append(helper.make_node("Conv", [x, w], [f"conv{i}"], pads=[1, 1, 1, 1]))
        stats = (
            ("s", rng.uniform(0.5, 1.5, channels)),
            ("b", rng.normal(0, 0.1, channels)),
            ("m", rng.normal(0, 0.1, channels)),
            ("v", rng.uniform(0.5, 2, channels)),
        )
        bn = [init(f"bn{i}.{k}", v) for k, v in stats]
        nodes.append(helper.make_node("BatchNormalization", [f"conv{i}", *bn], [f"bn{i}"]))
        if i % 4 == 3 and skip is not None:
            nodes.append(helper.make_node("Add", [f"bn{i}", skip], [f"res{i}"]))
            nodes.append(helper.make_node("Relu", [f"res{i}"], [f"relu{i}"]))
        else:
            nodes.append(helper.make_node("Relu", [f"bn{i}"], [f"relu{i}"]))
        x = f"relu{i}"
        if i % 4 == 0:
            skip = x
        cin = channels
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"]))
    graph = helper.make_graph(
        nodes,
        "bench_convnet",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, hw, hw])],
        [helper.make_tensor_value_info("gap", TensorProto.FLOAT, ["N", channels, 1, 1])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def make_data(path: Path, model: Path, n: int, seed: int = 1) -> Path:
    m = onnx.load(str(model))
    feeds = {}
    rng = np.random.default_rng(seed)
    inits = {i.name for i in m.graph.initializer}
    for vi in m.graph.input:
        if vi.name in inits:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in vi.type.tensor_type.shape.dim]
        dims[0] = n
        feeds[vi.name] = rng.normal(0, 1, dims).astype(np.float32)
    np.savez(path, **feeds)
    return path


def _feeds(data: Path, batch: int):
    z = np.load(data)
    n = len(z[z.files[0]])
    for s in range(0, n, batch):
        yield {k: z[k][s : s + batch] for k in z.files}


# --- contenders (each runs in a child process) ----------------------------------------------------


def run_plain(model: Path, data: Path, batch: int, out: Path) -> dict:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    t = time.perf_counter()
    for f in _feeds(data, batch):
        sess.run(None, f)
    return {"seconds": time.perf_counter() - t}


def run_calibkit(model: Path, data: Path, batch: int, out: Path) -> dict:
    from calibkit.calibration import calibrate

    t = time.perf_counter()
    # calibkit picks its own run batch (that is the product default); ``batch`` feeds the others
    r = calibrate(model, data=str(data), method="entropy", output_dir=out, recollect=True, device="cpu")
    return {
        "seconds": time.perf_counter() - t,
        "tensors": len(r.table.tensors),
        "threshold_seconds": r.timings["threshold"],
        "collect_seconds": r.timings["collect"],
        "run_batch": r.collection.stats.run_batch,
    }


def _ort_calibrator(model: Path, data: Path, batch: int, out: Path, method: str) -> dict:
    from onnxruntime.quantization.calibrate import CalibrationDataReader, CalibrationMethod, create_calibrator

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = _feeds(data, batch)

        def get_next(self):
            return next(self.it, None)

    t = time.perf_counter()
    cal = create_calibrator(
        str(model),
        None,
        augmented_model_path=str(out / f"aug_{method}.onnx"),
        calibrate_method=getattr(CalibrationMethod, method),
        providers=["CPUExecutionProvider"],
    )
    cal.collect_data(Reader())
    ranges = cal.compute_data()
    return {"seconds": time.perf_counter() - t, "tensors": len(ranges.data)}


def run_ort_entropy(model, data, batch, out):
    return _ort_calibrator(model, data, batch, out, "Entropy")


def run_ort_minmax(model, data, batch, out):
    return _ort_calibrator(model, data, batch, out, "MinMax")


CONTENDERS = {
    "plain": run_plain,
    "calibkit": run_calibkit,
    "ort_entropy": run_ort_entropy,
    "ort_minmax": run_ort_minmax,
}


def child(name: str, model: str, data: str, batch: int, out: str) -> None:
    res = CONTENDERS[name](Path(model), Path(data), batch, Path(out))
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(res))


def spawn(name: str, model: Path, data: Path, batch: int, out: Path) -> dict:
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    proc = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            name,
            "--model",
            str(model),
            "--data",
            str(data),
            "--batch",
            str(batch),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-2000:]}")
    return json.loads(line[7:])


def threshold_microbench(reps: int = 50) -> float:
    """Mean ms for entropy on a dense 2048-bin histogram (normal + heavy tail)."""
    from calibkit.methods import entropy
    from calibkit.numerics.histogram import TensorHistogram

    rng = np.random.default_rng(0)
    hs = []
    for k in range(reps):
        h = TensorHistogram()
        h.update(
            np.concatenate([rng.standard_normal(200000) * (k + 1), rng.laplace(0, 3 * (k + 1), 5000)]).astype(
                np.float32
            )
        )
        hs.append(h)
    entropy.select_bin(hs[0], entropy.EntropyConfig())
    t = time.perf_counter()
    for h in hs:
        entropy.select_bin(h, entropy.EntropyConfig())
    return (time.perf_counter() - t) / reps * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model")
    ap.add_argument("--data")
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument(
        "--channels", type=int, default=32, help="generated model width (compute per activation grows with it)"
    )
    ap.add_argument("--hw", type=int, default=32, help="generated model spatial size")
    ap.add_argument("--skip-ort-entropy", action="store_true", help="ORT's Entropy calibrator is slow; skip it")
    ap.add_argument("--child")
    ap.add_argument("--out")
    a = ap.parse_args()
    if a.child:
        child(a.child, a.model, a.data, a.batch, a.out)
        return
    with tempfile.TemporaryDirectory(prefix="calibkit-bench-") as tmp:
        tmp = Path(tmp)
        model = Path(a.model) if a.model else make_model(tmp / "bench.onnx", channels=a.channels, hw=a.hw)
        data = Path(a.data) if a.data else make_data(tmp / "data.npz", model, a.samples)
        data4 = None if a.data else make_data(tmp / "data4.npz", model, 4 * a.samples)
        n = len(np.load(data)[np.load(data).files[0]])
        what = f"generated conv net {a.channels}x{a.hw}x{a.hw}" if not a.model else model.name
        print(f"model {what}, {n} samples, batch {a.batch} (ORT runs), {os.cpu_count()} CPUs")
        res = {}
        for name in ("plain", "calibkit", "ort_minmax") + (() if a.skip_ort_entropy else ("ort_entropy",)):
            res[name] = spawn(name, model, data, a.batch, tmp)
            print(
                f"  {name:12s} {res[name]['seconds']:8.2f} s  peak RSS {res[name]['peak_rss_mb']:8.0f} MB", flush=True
            )
        if data4 is not None:
            res["calibkit_4n"] = spawn("calibkit", model, data4, a.batch, tmp)
            res["plain_4n"] = spawn("plain", model, data4, a.batch, tmp)
            print(
                f"  calibkit 4N  {res['calibkit_4n']['seconds']:8.2f} s  peak RSS {res['calibkit_4n']['peak_rss_mb']:8.0f} MB"
            )
        ck = res["calibkit"]
        print(f"\nactivation tensors: {ck['tensors']} (ORT calibrators see {res['ort_minmax']['tensors']})")
        print(
            f"calibkit: run batch {ck['run_batch']}, collect {ck['collect_seconds']:.2f} s, threshold {ck['threshold_seconds']:.2f} s "
            f"= {ck['threshold_seconds'] / ck['tensors'] * 1e3:.2f} ms per tensor (2 threads)"
        )
        print(f"entropy threshold, one 2048-bin tensor, one thread: {threshold_microbench():.2f} ms")
        print("\nratios (target):")
        print(
            f"  calibkit entropy end to end / plain inference   {ck['seconds'] / res['plain']['seconds']:6.2f}x  (<= 5x)"
        )
        if "ort_entropy" in res:
            print(
                f"  ORT Entropy / calibkit entropy (speed-up)       {res['ort_entropy']['seconds'] / ck['seconds']:6.2f}x  (>= 10x)"
            )
            print(
                f"  calibkit RSS / ORT Entropy RSS                  {ck['peak_rss_mb'] / res['ort_entropy']['peak_rss_mb']:6.3f}   (<= 0.125)"
            )
        print(f"  ORT MinMax / calibkit entropy (speed-up)        {res['ort_minmax']['seconds'] / ck['seconds']:6.2f}x")
        print(
            f"  calibkit RSS / ORT MinMax RSS                   {ck['peak_rss_mb'] / res['ort_minmax']['peak_rss_mb']:6.3f}"
        )
        if "calibkit_4n" in res:
            print(
                f"  calibkit RSS at 4N / at N                       {res['calibkit_4n']['peak_rss_mb'] / ck['peak_rss_mb']:6.3f}   (<= 1.10)"
            )
            print(
                f"  calibkit 4N time / plain 4N time                {res['calibkit_4n']['seconds'] / res['plain_4n']['seconds']:6.2f}x"
            )


if __name__ == "__main__":
    main()
