"""export-qdq says what it wrote: an export where every layer is excluded does not claim INT8."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
from models import conv_net


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "calibkit", *map(str, args)], capture_output=True, text=True, cwd=cwd)


def test_nothing_quantized_is_said(tmp_path):
    conv_net(tmp_path / "m.onnx")
    np.savez(tmp_path / "cal.npz", x=np.random.default_rng(0).normal(size=(16, 3, 8, 8)).astype(np.float32))
    assert _cli("calibrate", "m.onnx", "--data", "cal.npz", "-o", "cal", cwd=tmp_path).returncode == 0
    for precision in ("int8", "fp8"):
        r = _cli(
            "export-qdq",
            "m.onnx",
            "--scales",
            "cal/scales.json",
            "--exclude-nodes",
            ".*",
            "--precision",
            precision,
            "-o",
            f"none-{precision}.onnx",
            cwd=tmp_path,
        )
        assert r.returncode == 0, r.stderr
        assert "nothing is quantized" in r.stdout and "INT8" not in r.stdout and "quantized activations" not in r.stdout
        m = onnx.load(str(tmp_path / f"none-{precision}.onnx"))
        assert not [n for n in m.graph.node if n.op_type == "QuantizeLinear"]
        r = _cli(
            "export-qdq",
            "m.onnx",
            "--scales",
            "cal/scales.json",
            "--precision",
            precision,
            "-o",
            f"q-{precision}.onnx",
            cwd=tmp_path,
        )
        assert r.returncode == 0 and "quantized activations" in r.stdout, r.stdout


def test_any_output_suffix_is_written_as_an_onnx_model(tmp_path):
    """onnx picks a text format from a .json/.txt suffix when loading: export-qdq -o x.json
    wrote the model, then failed reading it back (a traceback)."""
    conv_net(tmp_path / "m.onnx")
    np.savez(tmp_path / "cal.npz", x=np.random.default_rng(0).normal(size=(16, 3, 8, 8)).astype(np.float32))
    assert _cli("calibrate", "m.onnx", "--data", "cal.npz", "-o", "cal", cwd=tmp_path).returncode == 0
    for name in ("x.json", "x.txt"):
        r = _cli("export-qdq", "m.onnx", "--scales", "cal/scales.json", "-o", name, cwd=tmp_path)
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
        assert onnx.load(str(tmp_path / name), format="protobuf").graph.node
