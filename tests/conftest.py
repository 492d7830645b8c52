from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent / "helpers"))

import models  # noqa: E402


class CLI:
    """Runs the real `calibkit` entry point (python -m calibkit) in a subprocess."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd

    def __call__(self, *args: str, expect: int | None = 0) -> subprocess.CompletedProcess:
        env = {**os.environ, "COLUMNS": "80", "NO_COLOR": "1"}
        proc = subprocess.run(
            [sys.executable, "-m", "calibkit", *map(str, args)],
            cwd=self.cwd,
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
        if expect is not None and proc.returncode != expect:
            raise AssertionError(f"exit {proc.returncode} != {expect}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
        return proc


@pytest.fixture
def cli(tmp_path: Path) -> CLI:
    return CLI(tmp_path)


@pytest.fixture
def conv_model(tmp_path: Path) -> Path:
    return models.conv_net(tmp_path / "conv.onnx")


@pytest.fixture
def conv_data(tmp_path: Path) -> Path:
    rng = np.random.default_rng(7)
    x = rng.normal(0, 1, (37, 3, 8, 8)).astype(np.float32)
    x[5, 0, 0, 0] = 9.0  # an outlier, so methods disagree
    path = tmp_path / "calib.npz"
    np.savez(path, x=x)
    return path


@pytest.fixture
def hostile(tmp_path: Path, cli):
    """models.hostile_net calibrated on 64 samples: (model, scales.json, 48-sample validation .npz)."""
    model = models.hostile_net(tmp_path / "h.onnx")
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "cal.npz", x=rng.normal(0, 1, (64, 3, 8, 8)).astype(np.float32))
    np.savez(tmp_path / "val.npz", x=rng.normal(0, 1, (48, 3, 8, 8)).astype(np.float32))
    cli("calibrate", model, "--data", tmp_path / "cal.npz", "-o", tmp_path / "cal")
    return model, tmp_path / "cal" / "scales.json", tmp_path / "val.npz"
