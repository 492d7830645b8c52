"""Worker processes die with the parent (issue 21, item 7): SIGKILL of `fallback --workers 2`
while its workers are still starting leaves no worker (and no resource tracker) behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from models import conv_net


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(d.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_sigkill_during_worker_startup_leaves_no_orphans(tmp_path, cli):
    model = conv_net(tmp_path / "conv.onnx")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "cal.npz", x=rng.normal(0, 1, (16, 3, 8, 8)).astype(np.float32))
    np.savez(tmp_path / "val.npz", x=rng.normal(0, 1, (8, 3, 8, 8)).astype(np.float32))
    cli("calibrate", model, "--data", tmp_path / "cal.npz", "-o", tmp_path / "cal")
    proc = subprocess.Popen(
        [sys.executable, "-m", "calibkit", "fallback", str(model), "--scales", str(tmp_path / "cal" / "scales.json")]
        + [
            "--data",
            str(tmp_path / "val.npz"),
            "--min-cosine",
            "0.99999",
            "--workers",
            "2",
            "-o",
            str(tmp_path / "fb"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "COLUMNS": "80", "NO_COLOR": "1"},
    )
    deadline = time.monotonic() + 120
    kids: list[int] = []
    while time.monotonic() < deadline and proc.poll() is None:
        kids = _children(proc.pid)
        if len(kids) >= 3:  # two workers and the resource tracker, still starting
            break
        time.sleep(0.01)
    assert len(kids) >= 3 and proc.poll() is None, "fallback never started its workers"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 15  # a worker's start-up (imports) takes a few seconds on a loaded machine
    while time.monotonic() < deadline and any(_alive(k) for k in kids):
        time.sleep(0.1)
    left = [k for k in kids if _alive(k)]
    for k in left:
        os.kill(k, signal.SIGKILL)
    assert not left, f"processes left running after the parent was killed: {left}"
