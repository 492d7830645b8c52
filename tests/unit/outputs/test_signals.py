"""A signal aimed into each step of the commit (issue 21, item 1): calibrate, compare,
export-qdq, fallback and quantize each pause at a commit step (``CALIBKIT_TEST_PAUSE_AT``), get
SIGINT, SIGTERM or SIGHUP there, and must leave a set readers accept -- the old one or the new
one, never mixed -- and an interrupt message that is true. Real CLI, real files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from models import conv_net

from calibkit.outputs.sets import META, recover, sha256_file


def _env(**extra) -> dict:
    return {**os.environ, "COLUMNS": "80", "NO_COLOR": "1", **extra}


def _cli(*args, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "calibkit", *map(str, args)],
        capture_output=True,
        text=True,
        env=_env(**env),
        timeout=300,
    )


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    model = conv_net(d / "conv.onnx")
    rng = np.random.default_rng(7)
    np.savez(d / "cal0.npz", x=rng.normal(0, 1, (24, 3, 8, 8)).astype(np.float32))
    np.savez(d / "cal1.npz", x=rng.normal(0, 2, (24, 3, 8, 8)).astype(np.float32))
    np.savez(d / "val.npz", x=rng.normal(0, 1, (8, 3, 8, 8)).astype(np.float32))
    r = _cli("calibrate", model, "--data", d / "cal0.npz", "-o", d / "cal")
    assert r.returncode == 0, r.stderr
    return d


# command -> (argv for output folder OUT, the folder holding the set's manifest)
COMMANDS = {
    # other data each time: a calibration of the same data keeps its histograms (one move fewer)
    "calibrate": (
        lambda d, out, i: ["calibrate", d / "conv.onnx", "--data", d / f"cal{i % 2}.npz", "-o", out],
        lambda out: out,
    ),
    "compare": (
        lambda d, out, i: [
            "compare",
            d / "conv.onnx",
            "--histograms",
            d / "cal" / "histograms.npz",
            "--data",
            d / "val.npz",
            "--methods",
            "entropy,minmax",
            "--report",
            out / "report.html",
        ],
        lambda out: out / "report.methods",
    ),
    "export-qdq": (
        lambda d, out, i: ["export-qdq", d / "conv.onnx", "--scales", d / "cal" / "scales.json", "-o", out / "q.onnx"],
        lambda out: out,
    ),
    "fallback": (
        lambda d, out, i: [
            "fallback",
            d / "conv.onnx",
            "--scales",
            d / "cal" / "scales.json",
            "--data",
            d / "val.npz",
            "--min-cosine",
            "0.999",
            "-o",
            out,
        ],
        lambda out: out,
    ),
    "quantize": (
        lambda d, out, i: ["quantize", d / "conv.onnx", "--data", d / "cal0.npz", "--val", d / "val.npz", "-o", out],
        lambda out: out,
    ),
}


def _the_set(home: Path) -> tuple[str, dict[str, str]]:
    """(run id, files) of the one manifest in ``home``, after a reader's recovery; every file it
    names must match (what readers check), and nothing half-done may be left behind."""
    for d in [home, home.parent, *home.iterdir()]:
        if (d / META).is_dir():
            recover(d)
            assert not list((d / META).glob("*.journal.json")) and not list((d / META).glob("stage-*")), d
    (mf,) = sorted((home / META).glob("*.manifest.json"))
    doc = json.loads(mf.read_text())
    for name, digest in doc["files"].items():
        assert sha256_file(home / name) == digest, f"{name} is not the file run {doc['run_id']} published: a mixed set"
    return doc["run_id"], doc["files"]


def _run_id(manifest_home: Path) -> str:
    return json.loads(next((manifest_home / META).glob("*.manifest.json")).read_text())["run_id"]


def _points(n_moves: int, every: bool) -> list[str]:
    steps = [f"moved:{k}" for k in range(n_moves)]
    if not every:
        steps = sorted({steps[0], steps[n_moves // 2], steps[-1]}, key=steps.index)
    return ["before-commit", "committed", *steps]


SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_signal_in_every_commit_step_leaves_old_or_new_set_and_a_true_message(inputs, tmp_path, command):
    argv, home_of = COMMANDS[command]
    out = tmp_path / "out"
    r = _cli(*argv(inputs, out, 1))
    assert r.returncode == 0, r.stderr
    old_id, old_files = _the_set(home_of(out))
    for i, point in enumerate(_points(len(old_files) + 1, every=command == "calibrate")):
        sig = SIGNALS[i % len(SIGNALS)]
        before = _run_id(home_of(out))
        mark = tmp_path / f"paused-{i}"
        proc = subprocess.Popen(
            [sys.executable, "-m", "calibkit", *map(str, argv(inputs, out, i))],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(
                CALIBKIT_TEST_PAUSE_AT=point,
                CALIBKIT_TEST_PAUSE_FILE=str(mark),
                CALIBKIT_TEST_PAUSE_S="1.5",
                CALIBKIT_TEST_PAUSE_DIR=str(home_of(out).resolve()),
            ),
        )
        deadline = time.monotonic() + 240
        while not mark.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert mark.exists(), (command, point, proc.communicate()[1])
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=240)
        assert "Traceback" not in err, err
        assert proc.returncode == 128 + sig, (command, point, sig, proc.returncode, err)
        run_id, _ = _the_set(home_of(out))
        published = run_id != before
        # committed or past it: the set is the new one; the message says so, and only then
        if point.startswith(("moved:", "committed")):
            assert published, (command, point, "the commit point was passed: the new set must be complete")
        assert ("nothing from this run was published" in err) == (not published), (command, point, sig, err)
        assert ("published before it" in err) == published, (command, point, sig, err)


# An interrupt that lands inside a C extension's import (ONNX Runtime's pybind module during CI)
# surfaces as that extension's ImportError, not as KeyboardInterrupt. The loader below does what
# such an import does: the handler's exception is swallowed and a plain error raised instead.
DISGUISED = """
import os, signal, time
try:
    os.kill(os.getpid(), signal.{sig})
    time.sleep(5)
except BaseException:
    pass
raise ImportError("initialization failed")

def load_data():
    yield {{}}
"""


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_interrupt_disguised_as_an_import_error_is_an_interrupt(inputs, tmp_path, sig):
    loader = tmp_path / "loader.py"
    loader.write_text(DISGUISED.format(sig=sig))
    out = tmp_path / "out"
    r = _cli("calibrate", inputs / "conv.onnx", "--data", loader, "-o", out)
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == 128 + getattr(signal, sig), (r.returncode, r.stderr)
    assert "interrupted; nothing from this run was published" in r.stderr, r.stderr
    assert "initialization failed" not in r.stderr
    assert not out.exists()


LATE = """
import os, signal, sys
import click
from calibkit.cli import entry

@click.command()
def late():
    print("wrote report r.html", flush=True)
    os.kill(os.getpid(), signal.{sig})  # after the command's own handling: click's, before
    import time; time.sleep(5)

signal.signal(signal.SIGTERM, entry._on_sigterm)
signal.signal(signal.SIGINT, entry._on_sigint)
entry._run(late)
"""


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_interrupt_after_the_last_line_is_calibkits_not_clicks(tmp_path, sig):
    r = subprocess.run([sys.executable, "-c", LATE.format(sig=sig)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 128 + getattr(signal, sig), (r.returncode, r.stderr)
    assert "Aborted!" not in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert "calibkit: interrupted; nothing from this run was published" in r.stderr, r.stderr


AFTER = """
import atexit, os, signal, threading, time
import click
from calibkit.cli import entry

@click.command()
def done():
    print("wrote report r.html", flush=True)
    threading.Timer(0.3, os.kill, (os.getpid(), signal.{sig})).start()

atexit.register(time.sleep, 1.0)  # Python's shutdown: the window the interrupt lands in
signal.signal(signal.SIGTERM, entry._on_sigterm)
signal.signal(signal.SIGINT, entry._on_sigint)
entry._run(done)
"""


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_interrupt_after_the_command_ended_changes_nothing(sig):
    r = subprocess.run([sys.executable, "-c", AFTER.format(sig=sig)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "wrote report" in r.stdout, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and "Exception ignored" not in r.stderr and "interrupted" not in r.stderr, r.stderr
