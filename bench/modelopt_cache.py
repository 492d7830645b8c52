"""Does NVIDIA Model Optimizer (ONNX PTQ) accept calibkit's TensorRT cache, and do the
activation scales in its Q/DQ model equal calibkit's?

    python bench/modelopt_cache.py [--modelopt-python /path/to/venv/bin/python] [-o DIR]

1. `calibkit calibrate` the shipped demo (digits CNN) -> digits_cnn.cache
2. `python -m modelopt.onnx.quantization --quantize_mode int8 --calibration_cache_path ...`
   (in the interpreter given, where nvidia-modelopt[onnx] is installed)
   (--high_precision_dtype fp32: its default, fp16, stores the scales as float16)
3. every activation QuantizeLinear scale of ModelOpt's model vs the cache's scale (float32 bits)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from calibkit import demo
from calibkit.artifacts import trt_cache as cache_io


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--modelopt-python", default=sys.executable)
    ap.add_argument("-o", "--out", default=None)
    args = ap.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="calibkit-modelopt-"))
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "calibkit", "calibrate", "-o", str(out)], check=True, capture_output=True)
    cache = out / "digits_cnn.cache"
    ours = cache_io.read(cache)
    print(
        f"calibkit: {cache.name}: header {ours.header()}, {len(ours.scales)} tensors ({time.perf_counter() - t:.1f} s)"
    )
    mo_out = out / "digits_cnn.modelopt.qdq.onnx"
    cmd = [
        args.modelopt_python,
        "-m",
        "modelopt.onnx.quantization",
        "--onnx_path",
        str(demo.MODEL),
        "--quantize_mode",
        "int8",
        "--calibration_cache_path",
        str(cache),
        "--calibration_eps",
        "cpu",
        "--high_precision_dtype",
        "fp32",
        "--output_path",
        str(mo_out),
    ]
    ver = subprocess.run(
        [
            args.modelopt_python,
            "-c",
            "import modelopt, torch, onnxruntime as o; print(modelopt.__version__, torch.__version__, o.__version__)",
        ],
        capture_output=True,
        text=True,
    )
    print("modelopt, torch, onnxruntime:", ver.stdout.strip() or ver.stderr.strip().splitlines()[-1])
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    print(f"modelopt exit {proc.returncode} ({time.perf_counter() - t:.1f} s): {' '.join(cmd[1:])}")
    if proc.returncode != 0 or not mo_out.is_file():
        print("\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:]))
        return 1
    model = onnx.load(str(mo_out))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    rows = []
    for n in model.graph.node:
        if n.op_type == "QuantizeLinear" and n.input[0] not in inits and n.input[1] in inits:
            rows.append((n.input[0], float(np.asarray(inits[n.input[1]]).reshape(-1)[0])))
    same = [t for t, s in rows if t in ours.scales and np.float32(s) == np.float32(ours.scales[t])]
    missing = [t for t, _ in rows if t not in ours.scales]
    diffs = [abs(s / ours.scales[t] - 1) for t, s in rows if t in ours.scales]
    print(
        f"modelopt Q/DQ model: {len(rows)} activation QuantizeLinear nodes; {len(same)} scales bit-identical to calibkit's cache; "
        f"{len(missing)} on tensors absent from the cache; max relative difference {max(diffs, default=0):.3g}"
    )
    for tensor, s in rows:
        mine = ours.scales.get(tensor)
        print(
            f"  {tensor:40s} modelopt {s:.9g}  calibkit {mine if mine is None else f'{mine:.9g}'}  {'==' if tensor in same else '!='}"
        )
    return 0 if rows and len(same) == len(rows) else 2


if __name__ == "__main__":
    sys.exit(main())
