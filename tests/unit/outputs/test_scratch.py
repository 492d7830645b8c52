"""Scratch folders of a killed run are removed by the next run (calibkit/outputs/scratch.py):
a real quantize-like process SIGKILLed while its scratch exists, then the real CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

from calibkit.outputs import scratch


def test_a_live_folder_is_kept_and_a_released_one_is_gone(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)
    with scratch.scratch("quantize") as d:
        assert os.path.isdir(d)
        assert scratch.sweep(tmp_path) == []  # ours, in use
    assert not os.path.exists(d)


def test_sigkilled_owner_is_swept_and_a_live_other_process_is_not(tmp_path):
    code = textwrap.dedent(
        """
        import sys, time
        from calibkit.outputs import scratch
        d = scratch.make("quantize")
        (d / "big.npy").write_bytes(b"x" * 1000)
        print(d, flush=True)
        time.sleep(60)
        """
    )
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    dead, live = (p.stdout.readline().strip() for p in procs)
    procs[0].send_signal(signal.SIGKILL)
    procs[0].wait()
    try:
        # an unrelated folder with a calibkit-like name but not ours to judge, and a fresh one with no owner file
        (tmp_path / "calibkit-notes").mkdir()
        (tmp_path / "calibkit-quantize-abc123").mkdir()
        r = subprocess.run(
            [sys.executable, "-m", "calibkit", "inspect", "--help"], capture_output=True, text=True, env=env
        )
        assert r.returncode == 0, r.stderr
        # --help runs no command: the sweep runs with a command
        r = subprocess.run(
            [sys.executable, "-m", "calibkit", "inspect", str(tmp_path / "missing.onnx")],
            capture_output=True,
            text=True,
            env=env,
        )
        assert "missing.onnx" in r.stderr
        assert not os.path.exists(dead), "the SIGKILLed run's scratch is still there"
        assert os.path.isdir(live) and os.path.exists(os.path.join(live, "big.npy"))
        assert (tmp_path / "calibkit-notes").is_dir() and (tmp_path / "calibkit-quantize-abc123").is_dir()
    finally:
        procs[1].kill()
        procs[1].wait()
    time.sleep(0.1)
    assert scratch.sweep(tmp_path) == [tmp_path / os.path.basename(live)]


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "calibkit", *map(str, args)], capture_output=True, text=True, cwd=cwd)


def test_a_member_of_another_commands_set_is_not_replaced(tmp_path):
    """export-qdq -o into quantize's folder, quantize -o into calibrate's: refused (before the
    work, for quantize), and the other set still reads; re-running a set's own command is fine."""
    import numpy as np
    from models import conv_net

    conv_net(tmp_path / "m.onnx")
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "cal.npz", x=rng.normal(0, 1, (16, 3, 8, 8)).astype(np.float32))
    np.savez(tmp_path / "val.npz", x=rng.normal(0, 1, (8, 3, 8, 8)).astype(np.float32))
    assert _cli("calibrate", "m.onnx", "--data", "cal.npz", "-o", "cal", cwd=tmp_path).returncode == 0
    r = _cli("quantize", "m.onnx", "--data", "cal.npz", "--val", "val.npz", "-o", "q", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    before = {p.name: p.read_bytes() for p in (tmp_path / "q").iterdir() if p.is_file()}
    r = _cli("export-qdq", "m.onnx", "--scales", "cal/scales.json", "-o", "q/m.qdq.onnx", cwd=tmp_path)
    assert r.returncode == 1 and "belongs to the set `calibkit quantize`" in r.stderr, r.stderr
    assert {p.name: p.read_bytes() for p in (tmp_path / "q").iterdir() if p.is_file()} == before
    r = _cli("quantize", "m.onnx", "--data", "cal.npz", "--val", "val.npz", "-o", "cal", cwd=tmp_path)
    assert r.returncode == 1 and "belongs to the set `calibkit calibrate`" in r.stderr, r.stderr
    assert "calibrating" not in r.stderr  # refused before the work
    assert _cli("inspect", "cal/scales.json", cwd=tmp_path).returncode == 0
    r = _cli("quantize", "m.onnx", "--data", "cal.npz", "--val", "val.npz", "-o", "q", cwd=tmp_path)
    assert r.returncode == 0, r.stderr  # its own set: replaced whole
