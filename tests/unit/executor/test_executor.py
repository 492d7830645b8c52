"""The local executors (in-process, spawned worker processes): same results, setup once per
worker, errors as CalibkitError, Ctrl-C leaves no processes; the CLI's --workers/--ray options."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import exec_tasks as et
import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from calibkit import executor
from calibkit.cli.options import parallel_from, parallel_options, user_errors
from calibkit.errors import CalibkitError

HERE = Path(__file__).resolve().parents[2] / "helpers"


def _reference(items: list[dict]) -> list[str]:
    """Checksums computed here, without any executor."""
    import hashlib

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(et.model_bytes(), so, providers=["CPUExecutionProvider"])
    xs = et.inputs()
    return [
        hashlib.sha256(sess.run(None, {"x": xs[it["sample"]] * np.float32(it["gain"])})[0].tobytes()).hexdigest()
        for it in items
    ]


def test_one_and_two_workers_give_identical_results():
    items = et.onnx_items()
    payload = (et.model_bytes(), et.inputs())
    with executor.make(workers=1, setup=et.onnx_setup, setup_args=payload) as ex:
        assert ex.kind == "in-process"
        one = ex.run(et.onnx_task, items)
    with executor.make(workers=2, setup=et.onnx_setup, setup_args=payload) as ex:
        assert ex.kind == "local processes"
        seen = [index for index, _ in ex.map(et.onnx_task, items)]
        two = ex.run(et.onnx_task, items)  # the pool and its state persist across map calls
    assert sorted(seen) == list(range(len(items)))
    assert one == two
    assert [r["sha"] for r in one] == _reference(items)
    assert len({r["sha"] for r in one}) == len(items)  # the items really differ
    assert executor.state() is None  # the in-process run put the caller's state back


def test_setup_and_payload_reach_each_worker_once():
    payload = et.Payload(b"m" * 100_000)
    with executor.make(workers=2, setup=et.counting_setup, setup_args=(payload,)) as ex:
        rows = ex.run(et.who, range(12))
    assert [r["item"] for r in rows] == list(range(12))
    pids = {r["pid"] for r in rows}
    assert 1 <= len(pids) <= 2 and os.getpid() not in pids
    assert all(r["setups"] == 1 and r["loads"] == 1 and r["size"] == 100_000 for r in rows), rows
    # in-process: setup once, the payload never pickled
    before = et.SETUPS
    with executor.make(workers=1, setup=et.counting_setup, setup_args=(payload,)) as ex:
        rows = ex.run(et.who, range(3))
    assert et.SETUPS == before + 1 and {r["pid"] for r in rows} == {os.getpid()} and rows[0]["loads"] == et.LOADS == 0


@pytest.mark.parametrize("workers", [1, 2])
def test_task_errors_become_calibkit_errors(workers):
    with pytest.raises(CalibkitError, match=r"^layer conv1: scale is NaN; recalibrate$"):
        with executor.make(workers=workers) as ex:
            ex.run(et.fail, ["ok", "calibkit", "ok"])
    with pytest.raises(
        CalibkitError, match=r"^evaluation 2 failed: KeyError: 'missing' \(at exec_tasks.py:\d+ in fail\)$"
    ) as info:
        with executor.make(workers=workers) as ex:
            ex.run(et.fail, ["ok", "ok", "bug"])
    assert "Traceback" in info.value.details and '{}["missing"]' in info.value.details


@pytest.mark.parametrize(
    "kind, message",
    [
        ("calibkit", r"^model.onnx: not an ONNX model$"),
        ("value", r"^worker setup failed: ValueError: bad payload \(at exec_tasks.py:\d+ in failing_setup\)$"),
    ],
)
@pytest.mark.parametrize("workers", [1, 2])
def test_setup_errors_reach_the_caller(workers, kind, message):
    with pytest.raises(CalibkitError, match=message):
        with executor.make(workers=workers, setup=et.failing_setup, setup_args=(kind,)) as ex:
            ex.run(et.fail, ["ok", "ok"])


@pytest.mark.parametrize("how, said", [("die", "exit code 7"), ("kill", "killed by SIGKILL")])
def test_a_dying_worker_is_a_calibkit_error(how, said):
    with pytest.raises(CalibkitError, match=rf"^a worker process died while running evaluations \({said}\)"):
        with executor.make(workers=2) as ex:
            ex.run(et.fail, ["ok", how, "ok", "ok"])


@pytest.mark.parametrize("bad", [0, -3, "0", "-1", "two", "1.5", 2.0, "", True])
def test_bad_worker_counts(bad):
    with pytest.raises(CalibkitError, match=r"^--workers "):
        executor.make(workers=bad)


def test_good_worker_counts():
    assert executor.make(workers="3").workers == 3
    assert executor.make().kind == "in-process"


def _wait_for(predicate, timeout: float = 60.0, what: str = "") -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_ctrl_c_stops_local_workers(tmp_path):
    """SIGINT to the whole process group, as a terminal's Ctrl-C: the caller gets KeyboardInterrupt,
    the running tasks (60 s each) are abandoned, and no worker process outlives the run."""
    log = tmp_path / "tasks.log"
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "exec_tasks.py"), "interrupt", "local", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _wait_for(lambda: log.exists() and len(log.read_text().splitlines()) >= 2, what="both workers to start a task")
        os.killpg(proc.pid, signal.SIGINT)
        t0 = time.monotonic()
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert time.monotonic() - t0 < 20  # did not wait for the 60 s tasks
    assert proc.returncode == 130, (out, err)
    assert "interrupted; children: []" in out, out
    workers = {int(line.split()[0]) for line in log.read_text().splitlines()}
    assert len(workers) == 2
    assert not [p for p in workers if _alive(p)]


def test_cli_options_make_an_executor():
    @click.command()
    @parallel_options
    @user_errors
    def cmd(**kw):
        opts = parallel_from(kw)
        with executor.make(**opts) as ex:
            click.echo(json.dumps({**opts, "kind": ex.kind, "out": ex.run(et.fail, ["a", "b"])}))

    runner = CliRunner()
    r = runner.invoke(cmd, ["--workers", "2"])
    assert r.exit_code == 0 and json.loads(r.output) == {
        "workers": 2,
        "ray": None,
        "kind": "local processes",
        "out": ["a", "b"],
    }
    r = runner.invoke(cmd, [])
    assert r.exit_code == 0 and json.loads(r.output)["kind"] == "in-process"
    r = runner.invoke(cmd, ["--workers", "0"])
    assert r.exit_code == 1 and r.output.strip() == "calibkit: error: --workers 0: needs at least 1 worker"
    r = runner.invoke(cmd, ["--workers", "many"])
    assert r.exit_code == 1 and "--workers 'many': expected a whole number" in r.output
