"""sensitivity / fallback under input built to break them (a new user's attack, each finding a
test): targets only the float model meets, metrics returning NaN, NaN data, two runs into one
folder, two runs over the same evaluations, an unwritable cache, outputs vs --workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from calibkit.sensitivity import search as S


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CALIBKIT_CACHE", str(tmp_path / "cache"))


def test_every_layer_in_float_is_not_a_fallback():
    ev_table = {}

    def run_missing(configs, on_done):
        for c in configs:
            ev_table[c] = {"min_cosine": 1.0 if len(c) == 4 else 0.9, "cosine": {}}
            on_done(c, ev_table[c])

    sens = S.Sensitivity({"min_cosine": 0.9}, [S.LayerScore(i, {}, {}) for i in range(4)], None)
    fb = S.search(S.Evaluator(run_missing), sens, {"min_cosine": 0.99999999})
    assert not fb.met and len(fb.kept) == 4


def test_unreachable_target_exits_3_with_the_float_model_named(hostile, tmp_path, cli):
    model, scales, val = hostile
    r = cli(
        "fallback",
        model,
        "--scales",
        scales,
        "--data",
        val,
        "--min-cosine",
        "0.99999999",
        "-o",
        tmp_path / "fb",
        expect=3,
    )
    doc = json.loads((tmp_path / "fb" / "fallback.json").read_text())
    assert (
        not doc["pass"] and "only the float model meets the target" in doc["verdict"] and "0.99999999" in doc["verdict"]
    )
    assert "FAIL" in r.stdout and "Traceback" not in r.stderr


@pytest.mark.parametrize("body", ["np.full(len(labels), np.nan)", "np.where(np.arange(len(labels)) == 1, np.inf, 1.0)"])
def test_metric_returning_nan_is_a_one_line_error(hostile, tmp_path, cli, body):
    model, scales, val = hostile
    np.save(tmp_path / "labels.npy", np.zeros(48, np.int64))
    (tmp_path / "m.py").write_text(f"import numpy as np\ndef metric(outputs, labels):\n    return {body}\n")
    for cmd in ("sensitivity", "fallback", "validate"):
        out = ["--report", tmp_path / cmd / "r.html"] if cmd == "validate" else ["-o", tmp_path / cmd]
        args = [
            cmd,
            model,
            "--scales",
            scales,
            "--data",
            val,
            "--labels",
            tmp_path / "labels.npy",
            "--metric",
            f"{tmp_path / 'm.py'}:metric",
            *out,
        ]
        r = cli(*args, expect=1)
        assert (
            "NaN/inf score" in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
        ), r.stderr
        assert not (tmp_path / cmd).exists()


def test_nan_in_the_data_is_named_not_ranked(hostile, tmp_path, cli):
    model, scales, _ = hostile
    x = np.random.default_rng(2).normal(0, 1, (8, 3, 8, 8)).astype(np.float32)
    x[3, 0, 2, 2] = np.nan
    np.savez(tmp_path / "nan.npz", x=x)
    r = cli("sensitivity", model, "--scales", scales, "--data", tmp_path / "nan.npz", "-o", tmp_path / "s", expect=1)
    assert "NaN/inf" in r.stderr and "check the data" in r.stderr and "Traceback" not in r.stderr


def test_unwritable_cache_is_a_one_line_error(hostile, tmp_path, cli, monkeypatch):
    model, scales, val = hostile
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("CALIBKIT_CACHE", str(blocker))
    r = cli("sensitivity", model, "--scales", scales, "--data", val, "-o", tmp_path / "s", expect=1)
    assert "CALIBKIT_CACHE" in r.stderr and "Traceback" not in r.stderr


def _popen(args, env):
    return subprocess.Popen(
        [sys.executable, "-m", "calibkit", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_second_run_into_the_same_folder_fails_at_once(hostile, tmp_path):
    model, scales, val = hostile
    (tmp_path / "slow.py").write_text(
        "import time\ndef metric(outputs, labels):\n    time.sleep(0.2)\n    return (labels == labels).astype(float)\n"
    )
    np.save(tmp_path / "labels.npy", np.zeros(48, np.int64))
    common = [
        model,
        "--scales",
        scales,
        "--data",
        val,
        "--labels",
        tmp_path / "labels.npy",
        "--metric",
        f"{tmp_path / 'slow.py'}:metric",
        "-o",
        tmp_path / "same",
    ]
    env = {**os.environ, "COLUMNS": "80"}
    first = _popen(["sensitivity", *common], {**env, "CALIBKIT_CACHE": str(tmp_path / "c1")})
    deadline = time.monotonic() + 120
    while not (tmp_path / "same" / ".calibkit").exists() and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.05)
    second = subprocess.run(
        [sys.executable, "-m", "calibkit", "fallback", *map(str, common)],
        capture_output=True,
        text=True,
        env={**env, "CALIBKIT_CACHE": str(tmp_path / "c2")},
        timeout=120,
    )
    first.communicate(timeout=300)
    assert first.returncode == 0
    assert (
        second.returncode == 1
        and "in use by another calibkit run" in second.stderr
        and f"pid {first.pid}" in second.stderr
    )


def test_two_runs_over_the_same_evaluations_wait_and_reuse(hostile, tmp_path):
    model, scales, val = hostile
    env = {**os.environ, "COLUMNS": "80", "CALIBKIT_CACHE": str(tmp_path / "shared")}
    started = tmp_path / "evaluating"
    # the metric is slow (11 evaluations >= 5.5 s) and marks when the first run's evaluations begin
    (tmp_path / "slow.py").write_text(
        f"import pathlib, time\ndef metric(outputs, labels):\n    pathlib.Path({str(started)!r}).touch()\n"
        "    time.sleep(0.5)\n    return (labels == labels).astype(float)\n"
    )
    np.save(tmp_path / "labels.npy", np.zeros(48, np.int64))
    common = [
        model,
        "--scales",
        scales,
        "--data",
        val,
        "--labels",
        tmp_path / "labels.npy",
        "--metric",
        f"{tmp_path / 'slow.py'}:metric",
    ]
    a = _popen(["sensitivity", *common, "-o", tmp_path / "a"], env)
    deadline = time.monotonic() + 120
    while not started.exists() and a.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    b = subprocess.run(
        [sys.executable, "-m", "calibkit", "sensitivity", *map(str, common), "-o", tmp_path / "b"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    a.communicate(timeout=300)
    assert a.returncode == 0 and b.returncode == 0, b.stderr
    assert "waiting for it" in b.stderr  # a held the journal when b reached it
    da = json.loads((tmp_path / "a" / "sensitivity.json").read_text())
    db = json.loads((tmp_path / "b" / "sensitivity.json").read_text())
    assert da["layers"] == db["layers"]
    assert db["evaluations"]["reused_from_earlier_runs"] == db["evaluations"]["spent"]  # b ran nothing itself


def test_written_results_do_not_depend_on_workers(hostile, tmp_path, cli, monkeypatch):
    model, scales, val = hostile
    outs = []
    for w in ("1", "2"):
        monkeypatch.setenv("CALIBKIT_CACHE", str(tmp_path / f"cache{w}"))
        cli("sensitivity", model, "--scales", scales, "--data", val, "--workers", w, "-o", tmp_path / f"s{w}")
        outs.append((tmp_path / f"s{w}" / "sensitivity.json").read_bytes())
    assert outs[0] == outs[1]
    assert b"workers" not in outs[0] and b"seconds" not in outs[0]
