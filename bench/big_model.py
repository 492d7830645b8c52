"""A > 2 GiB model (weights in external data) calibrated end to end; not run in CI.

    PYTHONPATH=. python bench/big_model.py [--dir /tmp/big] [--gib 2.2]

Builds x[N,W] -> (MatMul W x W -> Relu) x L with float32 weights in one external-data file
(more than protobuf's 2 GiB in all), then runs ``calibkit.calibrate`` on 8 samples and prints
wall time, peak RSS and the tensor count. Needs ~2.5x the model size in free disk and ~1x in
memory (ORT maps/reads the weights once; calibkit never serialises them into a protobuf).
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def build(folder: Path, gib: float, width: int = 8192) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    layers = max(1, int(np.ceil(gib * (1 << 30) / (width * width * 4))))
    path = folder / "big.onnx"
    if path.exists():
        return path
    nodes, inits, x = [], [], "x"
    rng = np.random.default_rng(0)
    for i in range(layers):
        w = rng.standard_normal((width, width), dtype=np.float32) / np.float32(np.sqrt(width))
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes += [helper.make_node("MatMul", [x, f"w{i}"], [f"mm{i}"]), helper.make_node("Relu", [f"mm{i}"], [f"r{i}"])]
        x = f"r{i}"
    graph = helper.make_graph(
        nodes,
        "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", width])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(
        model,
        path,
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="big.onnx.data",
        size_threshold=0,
    )
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/tmp/calibkit-big")
    ap.add_argument("--gib", type=float, default=2.2)
    args = ap.parse_args()
    from calibkit import calibrate

    folder = Path(args.dir)
    t0 = time.perf_counter()
    model = build(folder, args.gib)
    data_size = (folder / "big.onnx.data").stat().st_size
    print(
        f"model {model}: graph {model.stat().st_size} B, external data {data_size / (1 << 30):.2f} GiB, built in {time.perf_counter() - t0:.1f} s"
    )
    width = onnx.load(str(model), load_external_data=False).graph.input[0].type.tensor_type.shape.dim[1].dim_value
    np.savez(folder / "calib.npz", x=np.random.default_rng(1).normal(size=(8, width)).astype(np.float32))
    t0 = time.perf_counter()
    r = calibrate(model, data=folder / "calib.npz", output_dir=folder / "out", device="cpu")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20)
    print(
        f"calibrated {len(r.table.tensors)} tensors on {r.histograms.samples} samples in {time.perf_counter() - t0:.1f} s; peak RSS {rss:.2f} GiB"
    )
    print(f"cache: {r.outputs['cache']}")


if __name__ == "__main__":
    main()
