"""The Ray executor on a real local Ray cluster (CI installs Ray through the test extra):
same results as the local executors, the payload shipped once per actor, the same error
messages, and a cluster started for the run stopped again after Ctrl-C."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import exec_tasks as et
import pytest

from calibkit import executor
from calibkit.errors import CalibkitError
from calibkit.executor.ray_exec import NEEDS_RAY

HERE = Path(__file__).resolve().parents[2] / "helpers"


def test_ray_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(CalibkitError) as info:
        executor.make(workers=2, ray="auto")
    assert str(info.value) == NEEDS_RAY == "--ray needs Ray: pip install 'calibkit[ray]'"


@pytest.mark.parametrize(
    "address, said",
    [
        ("free", r"no Ray cluster reachable there"),
        ("nonsense", r"expected HOST:PORT of a Ray cluster's head"),
        ("", r"give auto or the HOST:PORT"),
    ],
)
def test_bad_ray_addresses(address, said):
    pytest.importorskip("ray")
    if address == "free":
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            address = f"127.0.0.1:{s.getsockname()[1]}"  # nothing listens there once closed
    t0 = time.monotonic()
    with pytest.raises(CalibkitError, match=said) as info:
        with executor.make(workers=1, ray=address):
            pass
    assert address in str(info.value) and time.monotonic() - t0 < 10


@pytest.fixture(scope="module")
def ray_cluster():
    """One local cluster for the in-process tests, started by an executor as --ray auto does
    (the executors in the tests reuse this process's live connection); stopped and removed at the end."""
    ray = pytest.importorskip("ray")
    address = os.environ.pop("RAY_ADDRESS", None)
    ex = executor.make(workers=2, ray="auto").__enter__()
    try:
        assert ex.where == "a local Ray cluster" and Path(ex.temp_dir).is_dir() and ray.cluster_resources()["CPU"] == 2
        yield ray
    finally:
        ex.__exit__(None, None, None)
        if address is not None:
            os.environ["RAY_ADDRESS"] = address
    assert not ray.is_initialized() and not Path(ex.temp_dir).exists()


def test_ray_gives_the_same_results_as_local_workers(ray_cluster):
    """The ONNX workload on 1 and 2 local workers and on 2 Ray actors: identical results; each
    actor ran setup once and received the (counting) model payload once, over two map calls."""
    items = et.onnx_items()
    blob, xs = et.model_bytes(), et.inputs()
    with executor.make(workers=1, setup=et.onnx_setup, setup_args=(blob, xs)) as ex:
        one = ex.run(et.onnx_task, items)
    with executor.make(workers=2, setup=et.onnx_setup, setup_args=(blob, xs)) as ex:
        two = ex.run(et.onnx_task, items)
    with executor.make(ray="auto", setup=et.onnx_setup, setup_args=(et.Payload(blob), xs)) as ex:
        assert ex.kind == "ray" and ex.workers == 2  # default: every CPU of the cluster
        order = [index for index, _ in ex.map(et.onnx_task, items)]
        on_ray = ex.run(et.onnx_task, items)
        rows = ex.run(et.who, range(12))
    assert sorted(order) == list(range(len(items)))
    assert one == two == on_ray
    assert len({r["sha"] for r in on_ray}) == len(items)
    assert [r["item"] for r in rows] == list(range(12))
    pids = {r["pid"] for r in rows}
    assert 1 <= len(pids) <= 2 and os.getpid() not in pids
    assert all(r["setups"] == 1 and r["loads"] == 1 and r["size"] is True for r in rows), rows
    assert ray_cluster.is_initialized()  # a connection the caller made is left alone


LOCAL = {  # what the local executors say (tests/test_executor.py checks them)
    "calibkit": "layer conv1: scale is NaN; recalibrate",
    "bug": "evaluation 2 failed: KeyError: 'missing' (at exec_tasks.py:{line} in fail)",
}


def test_ray_errors_read_like_local_ones(ray_cluster):
    """Task errors keep the actors usable (the caller may go on); setup errors, a dead actor."""
    import inspect

    line = inspect.getsourcelines(et.fail)[1] + 4
    with executor.make(workers=2, ray="auto") as ex:
        with pytest.raises(CalibkitError) as info:
            ex.run(et.fail, ["ok", "calibkit", "ok"])
        assert str(info.value) == LOCAL["calibkit"]
        with pytest.raises(CalibkitError) as info:
            ex.run(et.fail, ["ok", "ok", "bug"])
        assert str(info.value) == LOCAL["bug"].format(line=line)
        assert ex.run(et.fail, ["a", "b", "c"]) == ["a", "b", "c"]
        with pytest.raises(CalibkitError) as info:
            ex.run(et.fail, ["ok", "die", "ok"])
        assert str(info.value).startswith("a Ray worker died while running evaluation 1 (ActorDiedError)"), info.value
    for kind, message in (
        ("calibkit", r"^model.onnx: not an ONNX model$"),
        ("value", r"^worker setup failed: ValueError: bad payload \(at exec_tasks.py:\d+ in failing_setup\)$"),
    ):
        with pytest.raises(CalibkitError, match=message):
            with executor.make(workers=1, ray="auto", setup=et.failing_setup, setup_args=(kind,)) as ex:
                ex.run(et.fail, ["ok"])
    with pytest.raises(CalibkitError, match=r"^--workers 3: the Ray cluster this process is connected to has 2 CPUs"):
        with executor.make(workers=3, ray="auto"):
            pass


def test_ray_auto_cluster_is_stopped_after_ctrl_c(tmp_path):
    """--ray auto without RAY_ADDRESS starts a local cluster for the run; SIGINT to the caller
    while its actors run 60-second tasks: it stops them and the cluster, nothing is left."""
    pytest.importorskip("ray")
    log = tmp_path / "tasks.log"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "exec_tasks.py"), "interrupt", "ray", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env=env,
    )
    try:
        temp = proc.stdout.readline().split()[-1]
        assert temp.startswith(tempfile.gettempdir()), temp
        end = time.monotonic() + 60
        while not (log.exists() and len(log.read_text().splitlines()) >= 2):
            assert proc.poll() is None and time.monotonic() < end, proc.communicate()
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGINT)
        t0 = time.monotonic()
        out, err = proc.communicate(timeout=60)
        stopped_in = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, (out, err)
    assert "interrupted; children: []" in out, out
    assert stopped_in < 30
    left = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and temp.encode() in (d / "cmdline").read_bytes():
                left.append(d.name)
        except OSError:
            pass
    actors = {int(line.split()[0]) for line in log.read_text().splitlines()}
    assert not left and not [p for p in actors if Path(f"/proc/{p}").exists()], (left, actors)
    assert not Path(temp).exists()
