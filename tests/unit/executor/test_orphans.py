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
from procs import children as _children


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


SLOW_TASK = """
import os, time
if os.environ.get("CALIBKIT_TEST_SLOW_IMPORT"):  # set for the workers only (by the driver)
    time.sleep(4)  # a worker importing (onnx, ml_dtypes...) while Ctrl-C reaches the process group

def setup():
    pass


def task(item):
    return item
"""

DRIVER = """
import os, sys
sys.path.insert(0, {folder!r})
import slowtask
from calibkit.executor.local import ProcessPool

os.environ["CALIBKIT_TEST_SLOW_IMPORT"] = "1"

try:
    with ProcessPool(2, setup=slowtask.setup) as ex:  # the setup's module is imported before any initializer
        ex_map = list(ex.map(slowtask.task, [1, 2, 3]))
except KeyboardInterrupt:
    print("parent interrupted", flush=True)
    sys.exit(130)
"""


def test_ctrl_c_while_workers_import_prints_no_worker_traceback(tmp_path):
    """Ctrl-C goes to the whole process group; workers still importing their task's module got
    it too and printed a KeyboardInterrupt traceback each (the parent handled it fine)."""
    (tmp_path / "slowtask.py").write_text(SLOW_TASK)
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER.format(folder=str(tmp_path))],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    time.sleep(2.0)  # the workers are inside their 4 s import
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert "parent interrupted" in out, (out, err)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
