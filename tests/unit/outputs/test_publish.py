"""One transaction per run: kills at every point, signals at random moments, a full disk,
a concurrent run, mixed sets and file modes, all through the real CLI."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

FILES = ("histograms.npz", "scales.json", "conv.cache", "conv.tensors.json")


def _digest(d: Path) -> dict[str, str | None]:
    return {f: hashlib.sha256((d / f).read_bytes()).hexdigest() if (d / f).is_file() else None for f in FILES}


def _env(**extra) -> dict:
    return {**os.environ, "COLUMNS": "80", "NO_COLOR": "1", **extra}


def _calibrate(model: Path, data: Path, out: Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "calibkit", "calibrate", str(model), "--data", str(data), "-o", str(out)],
        capture_output=True,
        text=True,
        env=_env(**env),
        timeout=300,
    )


@pytest.fixture
def two_sets(tmp_path, conv_model, conv_data):
    """An old published set, and the digests a second calibration (other data) publishes."""
    new_data = tmp_path / "new.npz"
    np.savez(new_data, x=np.random.default_rng(1).normal(0, 3, (20, 3, 8, 8)).astype(np.float32))
    old_dir, new_dir = tmp_path / "old", tmp_path / "new"
    assert _calibrate(conv_model, conv_data, old_dir).returncode == 0
    assert _calibrate(conv_model, new_data, new_dir).returncode == 0
    old, new = _digest(old_dir), _digest(new_dir)
    assert all(old.values()) and all(old[f] != new[f] for f in FILES)
    return conv_model, new_data, old_dir, old, new


def _settled(d: Path, model: Path) -> dict:
    """What any later reader sees: `calibkit inspect` first finishes an interrupted publish."""
    r = subprocess.run(
        [sys.executable, "-m", "calibkit", "inspect", str(d / "scales.json")],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
    )
    assert "Traceback" not in r.stderr, r.stderr
    return _digest(d)


POINTS = [f"staged:{f}" for f in FILES] + ["before-commit", "committed"] + [f"moved:{k}" for k in range(5)]


@pytest.mark.parametrize("point", POINTS)
def test_sigkill_at_every_point_leaves_old_or_new_set(two_sets, tmp_path, point):
    model, new_data, old_dir, old, new = two_sets
    work = tmp_path / "work"
    shutil.copytree(old_dir, work)
    r = _calibrate(model, new_data, work, CALIBKIT_TEST_KILL_AT=point)
    assert r.returncode == -signal.SIGKILL, (point, r.returncode, r.stderr)
    seen = _settled(work, model)
    expect = new if point in ("committed",) or point.startswith("moved:") else old
    assert seen == expect, point
    assert not list((work / ".calibkit").glob("stage-*")) and not list((work / ".calibkit").glob("*.journal.json"))


@pytest.mark.parametrize(
    "sig,delay",
    [
        (signal.SIGINT, 0.6),
        (signal.SIGTERM, 0.9),
        (signal.SIGKILL, 1.2),
        (signal.SIGINT, 1.5),
        (signal.SIGTERM, 2.0),
        (signal.SIGKILL, 2.4),
    ],
)
def test_signal_at_a_random_moment_leaves_old_or_new_set(two_sets, tmp_path, sig, delay):
    model, new_data, old_dir, old, new = two_sets
    work = tmp_path / "work"
    shutil.copytree(old_dir, work)
    proc = subprocess.Popen(
        [sys.executable, "-m", "calibkit", "calibrate", str(model), "--data", str(new_data), "-o", str(work)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    time.sleep(delay)
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert "Traceback" not in err, err
    seen = _settled(work, model)
    assert seen in (old, new), (sig, delay, proc.returncode)
    if proc.returncode in (130, 143):  # the interrupt reached Python: its message must be true
        assert ("nothing from this run was published" in err) == (seen == old), err


def test_interrupt_during_collection_says_nothing_was_published(tmp_path, conv_model):
    loader = tmp_path / "slow.py"
    started = tmp_path / "collecting"
    loader.write_text(
        "import pathlib, time, numpy as np\n"
        "def load_data():\n"
        "    for i in range(400):\n"
        f"        if i == 3: pathlib.Path({str(started)!r}).touch()\n"
        "        time.sleep(0.05)\n"
        "        yield {'x': np.full((1, 3, 8, 8), i % 7, np.float32)}\n"
    )
    out = tmp_path / "o"
    proc = subprocess.Popen(
        [sys.executable, "-m", "calibkit", "calibrate", str(conv_model), "--data", str(loader), "-o", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    deadline = time.monotonic() + 120  # a loaded machine can take long to start; interrupt only once collection runs
    while not started.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert started.exists(), "calibrate never started collecting"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "nothing from this run was published" in err and "Traceback" not in err
    assert not out.exists() or not any(p.name in FILES for p in out.iterdir())


def test_a_second_concurrent_run_fails_clearly(tmp_path, conv_model, conv_data):
    loader = tmp_path / "slow.py"
    loader.write_text(
        "import time, numpy as np\n"
        "def load_data():\n"
        "    for i in range(60):\n"
        "        time.sleep(0.1)\n"
        "        yield {'x': np.full((1, 3, 8, 8), i % 5, np.float32)}\n"
    )
    out = tmp_path / "o"
    first = subprocess.Popen(
        [sys.executable, "-m", "calibkit", "calibrate", str(conv_model), "--data", str(loader), "-o", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    lock = out / ".calibkit" / "lock"
    deadline = time.time() + 60
    while time.time() < deadline and not (lock.is_file() and lock.read_text().startswith("pid")):
        time.sleep(0.1)
    second = _calibrate(conv_model, conv_data, out)
    assert second.returncode == 1, second.stderr
    assert "in use by another calibkit run" in second.stderr and f"pid {first.pid}" in second.stderr
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    # the published set is the first run's, whole
    hist = np.load(out / "histograms.npz")
    import json

    meta = json.loads(bytes(hist["meta"]).decode())
    assert meta["samples"] == 60 and "loader script" in meta["data"]
    assert _calibrate(conv_model, conv_data, out).returncode == 0  # free again afterwards


def test_reader_refuses_a_mixed_set(two_sets, tmp_path):
    model, new_data, old_dir, old, new = two_sets
    shutil.copy(tmp_path / "new" / "histograms.npz", old_dir / "histograms.npz")  # new histograms beside old scales
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "calibkit",
            "export-qdq",
            str(model),
            "--scales",
            str(old_dir / "scales.json"),
            "-o",
            str(tmp_path / "q.onnx"),
        ],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
    )
    assert r.returncode == 1 and "the set is mixed" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_outputs_get_the_umask_mode(tmp_path, conv_model, conv_data, umask, mode):
    out = tmp_path / "o"
    r = subprocess.run(
        [sys.executable, "-m", "calibkit", "calibrate", str(conv_model), "--data", str(conv_data), "-o", str(out)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
        preexec_fn=lambda: os.umask(umask),
    )
    assert r.returncode == 0, r.stderr
    for f in FILES:
        assert (out / f).stat().st_mode & 0o777 == mode, f


def _mount_tmpfs(path: Path, size_kb: int) -> bool:
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(path)], capture_output=True)
    return r.returncode == 0


def test_full_disk_keeps_the_old_set_and_says_so(two_sets, tmp_path):
    model, new_data, old_dir, old, new = two_sets
    mnt = tmp_path / "mnt"
    if not _mount_tmpfs(mnt, 2048):
        pytest.skip("cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN) to fill a disk for real")
    try:
        work = mnt / "o"
        shutil.copytree(old_dir, work)
        st = os.statvfs(mnt)
        filler = mnt / "filler"
        with open(filler, "wb") as fh:  # leave ~8 KB: less than a new set needs
            fh.write(b"\0" * max(0, st.f_bavail * st.f_frsize - 8192))
        r = _calibrate(model, new_data, work)
        assert r.returncode == 1, r.stderr
        assert "no space left" in r.stderr and "nothing was published" in r.stderr and "Traceback" not in r.stderr
        assert _digest(work) == old
        filler.unlink()
        fresh = mnt / "fresh"
        with open(filler, "wb") as fh:
            fh.write(b"\0" * max(0, os.statvfs(mnt).f_bavail * st.f_frsize - 8192))
        r = _calibrate(model, new_data, fresh)
        assert r.returncode == 1 and "no space left" in r.stderr
        assert not fresh.exists(), "a failed first run must not leave a half set (or an empty directory)"
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_files_of_the_previous_set_that_the_new_one_lacks_are_removed(cli, tmp_path, conv_model, conv_data):
    """calibrate --shards then a plain calibrate into the same folder: the old set's
    sufficiency.json and shards/ go (a CI job would read a stale verdict); a file the user
    edited since, or put there, stays."""
    cli("calibrate", conv_model, "--data", conv_data, "--shards", "2", "-o", "out", expect=None)
    out = tmp_path / "out"
    assert (out / "sufficiency.json").is_file() and (out / "shards").is_dir()
    mine = out / "notes.txt"
    mine.write_text("mine")
    cli("calibrate", conv_model, "--data", conv_data, "-o", "out")
    assert not (out / "sufficiency.json").exists() and not (out / "shards").exists()
    assert mine.read_text() == "mine" and (out / "scales.json").is_file()
    # an edited file of the old set is the user's now: kept
    cli("calibrate", conv_model, "--data", conv_data, "--shards", "2", "-o", "out2", expect=None)
    (tmp_path / "out2" / "sufficiency.json").write_text("{}")
    cli("calibrate", conv_model, "--data", conv_data, "-o", "out2")
    assert (tmp_path / "out2" / "sufficiency.json").read_text() == "{}"
