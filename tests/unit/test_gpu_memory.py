"""--gpu-memory: the size option and the buffer-set bound of the CUDA collector (the CUDA run
itself is measured on the GPU machine: bench/gpu_fresh.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from models import conv_net

from calibkit.cli.options import parse_size
from calibkit.collect.cuda.driver import DEFAULT_EXTRA, second_set
from calibkit.errors import CalibkitError

GiB = 2**30


@pytest.mark.parametrize(
    "text,want",
    [("6GB", 6 * 10**9), ("6000MB", 6 * 10**9), ("5.5GiB", int(5.5 * GiB)), ("1024", 1024), (" 2 gib ", 2 * GiB)],
)
def test_sizes(text, want):
    assert parse_size(text, "--gpu-memory") == want


@pytest.mark.parametrize("text", ["", "GB", "-1GB", "6 parsecs", "0", "1e9", "0.1B"])
def test_bad_sizes_name_the_option(text):
    with pytest.raises(CalibkitError, match="--gpu-memory"):
        parse_size(text, "--gpu-memory")


def test_second_set_bound():
    # --gpu-memory: what is in use after the first run plus one more set must fit
    assert second_set(1 * GiB, used=4 * GiB, free=70 * GiB, limit=5 * GiB)
    assert not second_set(1 * GiB, used=4 * GiB + 1, free=70 * GiB, limit=5 * GiB)
    # default: both sets within max(2 GiB, 25% of the rest of the first run's use), and half the free memory
    assert second_set(DEFAULT_EXTRA // 2, used=3 * GiB, free=70 * GiB, limit=None)
    assert not second_set(DEFAULT_EXTRA // 2 + 1, used=3 * GiB, free=70 * GiB, limit=None)
    assert second_set(3 * GiB, used=3 * GiB + 24 * GiB, free=40 * GiB, limit=None)  # 25% of 24 GiB = 6 GiB
    assert not second_set(1 * GiB, used=3 * GiB, free=int(1.5 * GiB), limit=None)


def test_cli_refuses_a_bad_size_before_any_work(tmp_path):
    model = conv_net(tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 3, 8, 8), np.float32))
    r = subprocess.run(
        [sys.executable, "-m", "calibkit", "calibrate", model, "--data", tmp_path / "d.npz", "--gpu-memory", "lots"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert r.returncode == 1 and "--gpu-memory 'lots'" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "scales.json").exists()


def test_cpu_run_with_a_bound_is_unchanged(tmp_path):
    model = conv_net(tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).normal(size=(8, 3, 8, 8)).astype(np.float32))
    outs = []
    for extra in ([], ["--gpu-memory", "1GB"]):
        out = tmp_path / f"o{len(extra)}"
        r = subprocess.run(
            [sys.executable, "-m", "calibkit", "calibrate", model, "--data", tmp_path / "d.npz", "-o", out, *extra],
            capture_output=True,
            text=True,
        )
        assert r.returncode == 0, r.stderr
        outs.append((out / "scales.json").read_bytes())
    assert outs[0] == outs[1]


def test_a_bound_too_small_to_load_the_model_names_the_option(monkeypatch, tmp_path):
    """On an H100 a 1-byte --gpu-memory failed at session creation ("Available memory of 0 is
    smaller than requested bytes of 256", from ORT's arena) with a message that did not name the
    option (seen in tests/gpu, session 4). Here ORT's refusal is stood in for: no GPU."""
    import onnxruntime as ort

    from calibkit import sessions

    def refuse(*a, **k):
        raise RuntimeError(
            "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Exception during initialization: bfc_arena.cc:360 "
            "Available memory of 0 is smaller than requested bytes of 256"
        )

    monkeypatch.setattr(ort, "InferenceSession", refuse)
    model = conv_net(tmp_path / "m.onnx")
    with pytest.raises(CalibkitError, match="--gpu-memory .* too little .* raise --gpu-memory"):
        sessions.session(model.read_bytes(), device="cpu", gpu_mem_limit=1)
    with pytest.raises(CalibkitError, match="cannot load"):  # without a bound: ORT's own words
        sessions.session(model.read_bytes(), device="cpu")
