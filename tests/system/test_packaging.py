"""The demo runs from a built wheel, installed in a fresh virtual environment, from an empty
directory (the model and its data are package data, not files of the clone)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(cmd, cwd, **kw):
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600, **kw)
    assert r.returncode == 0, (cmd, r.stdout[-2000:], r.stderr[-2000:])
    return r


def test_wheel_runs_the_bare_demo(tmp_path):
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(ROOT)], tmp_path)
    wheel = next(dist.glob("calibkit-*.whl"))
    venv = tmp_path / "venv"
    # The running interpreter's site-packages supply the dependencies (no network), also when it is
    # itself a venv (--system-site-packages would then see the base interpreter's, without onnx):
    # a .pth in the new venv lists them as plain paths (their own .pth files, such as an editable
    # calibkit's, are not processed), after the venv's own site-packages, where the wheel goes.
    _run([sys.executable, "-m", "venv", str(venv)], tmp_path)
    py = venv / "bin" / "python"
    own = _run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path).stdout.strip()
    deps = [p for p in sys.path if p.rstrip("/").endswith(("site-packages", "dist-packages")) and Path(p).is_dir()]
    (Path(own) / "calibkit-test-deps.pth").write_text("".join(f"{p}\n" for p in deps))
    _run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--force-reinstall", str(wheel)], tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = _run(
        [str(py), "-c", "import calibkit, calibkit.demo as d; print(calibkit.__file__); print(d.available())"],
        empty,
        env=env,
    ).stdout.split()
    assert str(venv) in where[0] and where[1] == "True", where
    r = _run([str(venv / "bin" / "calibkit"), "calibrate"], empty, env=env)
    assert "wrote scales" in r.stdout
    assert (empty / "calibkit-demo" / "digits_cnn.cache").is_file() and (
        empty / "calibkit-demo" / "scales.json"
    ).is_file()
    r = _run([str(venv / "bin" / "calibkit"), "validate", "--backends", "ort-int8"], empty, env=env)
    assert (empty / "calibkit-demo" / "report.html").is_file()
