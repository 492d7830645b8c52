"""Fixtures for the real-model corpus (tools/corpus.py): one parametrised case per model."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("calibkit_corpus", REPO / "tools" / "corpus.py")
corpus = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(corpus)

FETCH = "python tools/corpus.py fetch"
STEP_TIMEOUT = float(os.environ.get("CALIBKIT_CORPUS_TIMEOUT", "600"))  # calibrate can hang; never wait forever


def pytest_generate_tests(metafunc):
    if "corpus_model" in metafunc.fixturenames:
        metafunc.parametrize("corpus_model", corpus.MODELS, ids=[m["name"] for m in corpus.MODELS])


def corpus_files(corpus_model: dict) -> tuple[Path, Path, Path]:
    """(model.onnx, calib.npz, val.npz) of a present corpus model; skips naming the fetch command."""
    root = corpus.cache_dir()
    path = corpus.model_path(root, corpus_model)
    if not path.exists():
        pytest.skip(
            f"corpus model {corpus_model['name']} absent from {root}: run `{FETCH}` (or `{FETCH} --only {corpus_model['name']}`)"
        )
    calib, val = corpus.input_paths(root, corpus_model)
    if not (calib.exists() and val.exists()):
        corpus.make_inputs(root, corpus_model)
    return path, calib, val


@pytest.fixture
def model_files(corpus_model):
    return corpus_files(corpus_model)


class CorpusCLI:
    """Runs the real entry point (python -m calibkit) with a timeout per step."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd

    def __call__(self, *args) -> subprocess.CompletedProcess:
        env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
        cmd = [sys.executable, "-m", "calibkit", *map(str, args)]
        try:
            return subprocess.run(cmd, cwd=self.cwd, capture_output=True, text=True, env=env, timeout=STEP_TIMEOUT)
        except subprocess.TimeoutExpired as exc:
            tail = (exc.stderr or b"")[-3000:]
            tail = tail.decode(errors="replace") if isinstance(tail, bytes) else tail
            pytest.fail(
                f"`calibkit {' '.join(map(str, args))}` still running after {STEP_TIMEOUT:.0f} s (hang?)\nstderr tail:\n{tail}"
            )


@pytest.fixture
def corpus_cli(tmp_path):
    return CorpusCLI(tmp_path)
