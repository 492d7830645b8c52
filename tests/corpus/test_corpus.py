"""Real third-party models through the real CLI: calibrate (entropy) -> export-qdq -> validate.

Models come from tools/corpus.py (`python tools/corpus.py fetch`); absent ones are skipped.
Nothing here is xfail: a failure is a calibkit bug (or gap) to fix.
"""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import onnxruntime as ort

FLOAT = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}
NOT_ACTIVATIONS = {"Constant"}


def exposable_float_activations(model_path) -> tuple[list[str], list[str]]:
    """Float tensors ORT can expose as extra outputs: float graph inputs and float outputs of
    top-level nodes (subgraph-internal tensors cannot be exposed). Returns (float, untyped)."""
    model = onnx.load(str(model_path))
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {
        vi.name: vi.type.tensor_type.elem_type
        for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
        if vi.type.HasField("tensor_type")
    }
    inits = {i.name for i in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in inits]
    names += [o for n in model.graph.node if n.op_type not in NOT_ACTIVATIONS for o in n.output if o]
    floats = [n for n in dict.fromkeys(names) if types.get(n) in FLOAT]
    untyped = [n for n in dict.fromkeys(names) if not types.get(n)]
    return floats, untyped


def _tail(proc, n=40):
    return "\n".join((proc.stdout + "\n" + proc.stderr).strip().splitlines()[-n:])


def _feed(session, val_npz):
    """First validation sample in the shape each input is declared with (batch 1 where the
    sample axis is axis 0; state/scalar inputs as stored)."""
    data = np.load(val_npz)
    feed = {}
    for i in session.get_inputs():
        a = data[i.name]
        if a.ndim == len(i.shape):
            a = (
                a[:1]
                if a.ndim and (not isinstance(i.shape[0], int) or i.shape[0] == 1) and a.shape[0] != (i.shape[0] or 0)
                else a
            )
            if a.ndim == 3 and a.shape[0] == 2 and a.shape[1] > 1:  # [2, N, H] recurrent state
                a = a[:, :1]
        feed[i.name] = a
    return feed


def test_calibrate_export_validate(corpus_model, model_files, corpus_cli, tmp_path):
    model, calib, val = model_files
    out = tmp_path / "calib"

    # --tensors all: every float tensor gets a scale (the default leaves out those inside fused layers)
    cal = corpus_cli(
        "calibrate", model, "--data", calib, "--method", "entropy", "-o", out, "--device", "cpu", "--tensors", "all"
    )
    assert cal.returncode == 0, f"calibrate exit {cal.returncode}\n{_tail(cal)}"
    scales = json.loads((out / "scales.json").read_text())["tensors"]
    floats, untyped = exposable_float_activations(model)
    missing = [t for t in floats if t not in scales]
    bad = [t for t in floats if t in scales and not math.isfinite(float(scales[t].get("scale", float("nan"))))]
    assert not missing and not bad, (
        f"{len(floats)} float activations ({len(untyped)} untyped, not checked): "
        f"{len(missing)} without a scale (e.g. {missing[:8]}), {len(bad)} non-finite (e.g. {bad[:8]})"
    )

    qdq = tmp_path / "model.qdq.onnx"
    exp = corpus_cli("export-qdq", model, "--scales", out / "scales.json", "-o", qdq)
    assert exp.returncode == 0, f"export-qdq exit {exp.returncode}\n{_tail(exp)}"
    sess = ort.InferenceSession(str(qdq), providers=["CPUExecutionProvider"])
    outs = sess.run(None, _feed(sess, val))
    assert outs and all(np.all(np.isfinite(o.astype(np.float64))) for o in outs if np.issubdtype(o.dtype, np.floating))

    report = tmp_path / "report.html"
    # This test proves the pipeline runs on the model, not that entropy INT8 is accurate on synthetic
    # inputs (it is often not: bench/corpus.md): an explicit gate replaces the 0.99-cosine default.
    # Exit 3 is a verdict, not a crash: allowed only when a candidate's outputs went NaN/Inf
    # (oww_melspectrogram overflows float16), which fails closed whatever the gates.
    v = corpus_cli(
        "validate",
        model,
        "--scales",
        out / "scales.json",
        "--data",
        val,
        "--backends",
        "ort-int8,ort-fp16",
        "--report",
        report,
        "--device",
        "cpu",
        "--min-cosine",
        "-1",
    )
    assert v.returncode in (0, 3), f"validate exit {v.returncode}\n{_tail(v)}"
    if v.returncode == 3:
        assert "NaN/Inf values" in v.stdout, _tail(v)
    assert report.exists()
    doc = json.loads(report.with_suffix(".results.json").read_text())
    assert all(c["outputs"] for c in doc["candidates"][1:])
