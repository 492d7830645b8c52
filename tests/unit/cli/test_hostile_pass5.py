"""Fifth hostile pass (session 5, 2026-12-08): what the earlier attacks left as minor, and what
the fifth new-user attack found. Real CLI, real files."""

from __future__ import annotations

from test_hostile_pass2 import _one_line_error as _error  # exit 1, no traceback, one "calibkit: error:" line


def test_ort_placement_on_scales_of_a_narrower_selection_says_so(cli, tmp_path, conv_model, conv_data):
    """export-qdq --placement ort on --tensors qdq scales said "scales from another graph?" for
    scales of this very graph: the ort placement quantizes Conv outputs, which qdq leaves out."""
    cli("calibrate", conv_model, "--data", conv_data, "--tensors", "qdq", "-o", tmp_path / "q")
    line = _error(
        cli(
            "export-qdq",
            conv_model,
            "--scales",
            tmp_path / "q" / "scales.json",
            "--placement",
            "ort",
            "-o",
            tmp_path / "m.qdq.onnx",
            expect=None,
        )
    )
    assert "--tensors all" in line and "--placement ort" in line, line
    assert not (tmp_path / "m.qdq.onnx").exists()


def test_entropy_levels_above_the_default_start_bin_names_both(cli, tmp_path, conv_model, conv_data):
    """--levels 256 alone said only "start_bin must be in [levels, 2048], got 128"."""
    cli("calibrate", conv_model, "--data", conv_data, "-o", tmp_path / "cal")
    line = _error(
        cli(
            "calibrate",
            conv_model,
            "--histograms",
            tmp_path / "cal" / "histograms.npz",
            "--levels",
            "256",
            "-o",
            tmp_path / "l",
            expect=None,
        )
    )
    assert "levels 256" in line and "--start-bin" in line, line
    ok = cli(
        "calibrate",
        conv_model,
        "--histograms",
        tmp_path / "cal" / "histograms.npz",
        "--levels",
        "256",
        "--start-bin",
        "256",
        "-o",
        tmp_path / "l",
    )
    assert ok.returncode == 0 and (tmp_path / "l" / "scales.json").exists()


PESTER = r"""
import os, subprocess, sys
from calibkit.cli import entry

real = entry._settled
started = []


def settled():
    real()
    if not started:  # from here on a SIGINT every half millisecond until this process is gone
        loop = f"i=0; while [ $i -lt 4000 ] && kill -INT {os.getpid()} 2>/dev/null; do i=$((i+1)); sleep 0.0005; done"
        started.append(subprocess.Popen(["sh", "-c", loop], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))


entry._settled = settled
sys.argv = ["calibkit", "--version"]
entry.main()
"""


def test_a_signal_after_the_run_ended_does_not_change_its_exit_status(tmp_path):
    """A SIGINT after a complete set was published, while Python shut down, gave exit 130 and no
    message (attack 5: calibrate, quantize, export-qdq). Python's finalisation restores SIG_DFL
    under Python-level handlers; the settled run now ignores the signals outright."""
    import subprocess
    import sys

    for _ in range(3):
        r = subprocess.run([sys.executable, "-c", PESTER], capture_output=True, text=True, cwd=tmp_path, timeout=60)
        assert r.returncode == 0 and "calibkit, version" in r.stdout, (r.returncode, r.stderr[-500:])
