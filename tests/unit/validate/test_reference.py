"""``validate --reference ORIGINAL.onnx``: candidates of a model whose weights changed (what
``quantize`` writes as <stem>.recovered.onnx) judged against the original FP32 outputs.
Real CLI, real ORT sessions."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnx
from models import conv_net
from onnx import numpy_helper


def _cli(*args):
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-m", "calibkit", *map(str, args)], capture_output=True, text=True, env=env)


def _changed_copy(src, dst):
    m = onnx.load(str(src))
    for i, init in enumerate(m.graph.initializer):
        if init.name == "wf":
            w = numpy_helper.to_array(init).copy()
            w[:, :2] = -w[:, :2]  # another network's first output: the FP32 outputs disagree
            m.graph.initializer[i].CopyFrom(numpy_helper.from_array(w, "wf"))
    onnx.save(m, str(dst))
    return dst


def _worst_cosine(results):
    doc = json.loads(results.read_text())
    cand = next(c for c in doc["candidates"] if c["backend"] == "ort-int8")
    return min(o["cosine"] for o in cand["outputs"].values()), doc


def test_reference_judges_against_the_original(tmp_path):
    original = conv_net(tmp_path / "original.onnx")
    changed = _changed_copy(original, tmp_path / "changed.onnx")
    rng = np.random.default_rng(3)
    np.savez(tmp_path / "cal.npz", x=rng.normal(0, 1, (32, 3, 8, 8)).astype(np.float32))
    np.savez(tmp_path / "val.npz", x=rng.normal(0, 1, (16, 3, 8, 8)).astype(np.float32))
    r = _cli("calibrate", changed, "--data", tmp_path / "cal.npz", "-o", tmp_path / "cal")
    assert r.returncode == 0, r.stderr
    common = ["--scales", tmp_path / "cal" / "scales.json", "--data", tmp_path / "val.npz", "--backends", "ort-int8"]
    r = _cli("validate", changed, *common, "--report", tmp_path / "own.html")
    assert r.returncode in (0, 3), r.stderr
    own, _ = _worst_cosine(tmp_path / "own.results.json")
    r = _cli("validate", changed, *common, "--reference", original, "--report", tmp_path / "ref.html")
    assert r.returncode in (0, 3), r.stderr
    against, doc = _worst_cosine(tmp_path / "ref.results.json")
    assert own > 0.95 and against < own - 0.2, (own, against)
    # the FP32 model's own candidate against the reference: exactly the metric of the two FP32 outputs
    r = _cli(
        "validate",
        changed,
        "--data",
        tmp_path / "val.npz",
        "--backends",
        "ort-fp32",
        "--reference",
        original,
        "--report",
        tmp_path / "fp32.html",
    )
    assert r.returncode in (0, 3), r.stderr
    got = json.loads((tmp_path / "fp32.results.json").read_text())
    fp32 = next(c for c in got["candidates"][1:] if c["backend"] == "ort-fp32")["outputs"]["y"]["cosine"]
    import onnxruntime as ort

    from calibkit.validate.metrics import OutputMetrics

    x = np.load(tmp_path / "val.npz")["x"]
    a = ort.InferenceSession(str(original), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    b = ort.InferenceSession(str(changed), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    m = OutputMetrics()
    m.add(a, b)
    assert abs(fp32 - m.summary()["cosine"]) < 1e-9, (fp32, m.summary()["cosine"])
    # a byte copy of MODEL as the reference gives MODEL's own numbers
    copy = tmp_path / "copy.onnx"
    copy.write_bytes(changed.read_bytes())
    r = _cli("validate", changed, *common, "--reference", copy, "--report", tmp_path / "copy.html")
    assert r.returncode in (0, 3), r.stderr
    assert _worst_cosine(tmp_path / "copy.results.json")[0] == own
    assert "original.onnx" in json.dumps(doc)
    assert "original.onnx" in (tmp_path / "ref.html").read_text()


def test_reference_must_be_the_same_network(tmp_path):
    model = conv_net(tmp_path / "m.onnx")
    other = conv_net(tmp_path / "other.onnx", channels=1)
    m = onnx.load(str(other))
    m.graph.input[0].name = "z"
    m.graph.node[0].input[0] = "z"
    onnx.save(m, str(other))
    np.savez(tmp_path / "val.npz", x=np.zeros((2, 3, 8, 8), np.float32))
    r = _cli("validate", model, "--data", tmp_path / "val.npz", "--backends", "ort-fp16", "--reference", other)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "--reference" in r.stderr and "inputs" in r.stderr and "other.onnx" in r.stderr
    r = _cli("validate", model, "--data", tmp_path / "val.npz", "--backends", "ort-fp16", "--reference", model)
    assert r.returncode == 1 and "MODEL itself" in r.stderr
    r = _cli("validate", model, "--data", tmp_path / "val.npz", "--reference", tmp_path / "nope.onnx")
    assert r.returncode == 1 and "nope.onnx" in r.stderr and "Traceback" not in r.stderr
