"""A Q/DQ model with external data, as a reader that is not calibkit sees it (issue 21, item 5):
SIGKILL at every commit step of `export-qdq` over an earlier export leaves a graph whose data
file is its own (ONNX Runtime computes the old or the new model, never new graph + old weights),
and a finished export removes the data file the replaced graph used."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import qdq_models
from models import wide_net


def _cli(*args, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "calibkit", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "80", "NO_COLOR": "1", **env},
        timeout=300,
    )


def _run(model: Path, x: np.ndarray) -> np.ndarray:
    """What ONNX Runtime (not calibkit) computes from the files as they lie."""
    s = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return s.run(None, {"x": x})[0]


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    d = tmp_path_factory.mktemp("ext")
    x = np.random.default_rng(1).normal(0, 1, (16, 64)).astype(np.float32)
    np.savez(d / "x.npz", x=x)
    out = {}
    for name, seed in (("a", 0), ("b", 5)):
        plain = wide_net(d / f"{name}_plain.onnx", layers=2, width=64, seed=seed)
        ext = qdq_models.with_external_data(plain, d / f"{name}.onnx")
        r = _cli("calibrate", ext, "--data", d / "x.npz", "-o", d / f"cal_{name}")
        assert r.returncode == 0, r.stderr
        ref = d / f"ref_{name}" / "q.onnx"
        r = _cli("export-qdq", ext, "--scales", d / f"cal_{name}" / "scales.json", "-o", ref)
        assert r.returncode == 0, r.stderr
        out[name] = (ext, d / f"cal_{name}" / "scales.json", _run(ref, x[:4]))
    return out, x[:4]


@pytest.mark.parametrize("point", ["committed", "moved:0", "moved:1", "moved:2", None])
def test_a_kill_in_the_commit_never_pairs_a_new_graph_with_old_weights(tmp_path, two_models, point):
    models_, x = two_models
    (a, a_scales, a_out), (b, b_scales, b_out) = models_["a"], models_["b"]
    assert not np.allclose(a_out, b_out)
    target = tmp_path / "o" / "q.onnx"
    assert _cli("export-qdq", a, "--scales", a_scales, "-o", target).returncode == 0
    env = {"CALIBKIT_TEST_KILL_AT": point} if point else {}
    r = _cli("export-qdq", b, "--scales", b_scales, "-o", target, **env)
    assert r.returncode == (-signal.SIGKILL if point else 0), r.stderr
    got = _run(target, x)  # no calibkit process has touched the folder since
    assert np.array_equal(got, a_out) or np.array_equal(got, b_out), point
    if point is None:
        assert np.array_equal(got, b_out)
        data = sorted(p.name for p in target.parent.glob("q.onnx*.data"))
        assert len(data) == 1, data  # the replaced graph's data file is gone


def test_output_named_like_a_model_with_external_data_in_the_working_directory(two_models):
    """`export-qdq a.onnx -o sub/a.onnx` run where a.onnx.data lies: onnx's writer checks
    '<name>.data' against the current directory; the export stages under a name of its own."""
    models, x = two_models
    ext, scales, ref = models["a"]
    r = subprocess.run(
        [sys.executable, "-m", "calibkit", "export-qdq", ext.name, "--scales", str(scales), "-o", f"sub/{ext.name}"],
        capture_output=True,
        text=True,
        cwd=ext.parent,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(_run(ext.parent / "sub" / ext.name, x), ref)
    r = subprocess.run(
        [sys.executable, "-m", "calibkit", "export-qdq", ext.name, "--scales", str(scales), "-o", ext.name],
        capture_output=True,
        text=True,
        cwd=ext.parent,
        timeout=300,
    )
    assert r.returncode == 1 and "also an input" in r.stderr and "Traceback" not in r.stderr
