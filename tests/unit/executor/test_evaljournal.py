"""The evaluation journal: durable, tolerant of a torn last line, refuses another
fingerprint, and lets a killed run resume where it stopped with identical results."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import exec_tasks as et
import pytest

from calibkit import executor
from calibkit.errors import CalibkitError
from calibkit.executor.journal import Journal, run_missing

HERE = Path(__file__).resolve().parents[2] / "helpers"


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_put_get_and_reopen(tmp_path):
    path = tmp_path / "j.jsonl"
    with Journal(path, "fp1") as j:
        assert j.note is None and len(j) == 0 and j.get("a") is None
        assert j.put("a", (1.5, float("inf"), {"k": [1, 2]})) == [
            1.5,
            float("inf"),
            {"k": [1, 2]},
        ]  # as JSON reads it back
        j.put("b", 0.1 + 0.2)
        j.put("a", "ignored: a key is recorded once")
    assert _lines(path)[0] == {"calibkit": "evaljournal", "version": 1, "fingerprint": "fp1"}
    with Journal(path, "fp1") as j:
        assert j.note is None and j.keys() == ["a", "b"]
        assert j.get("a") == [1.5, float("inf"), {"k": [1, 2]}] and j.get("b") == 0.1 + 0.2  # floats exact
    with pytest.raises(TypeError):
        Journal(path, "fp1").put("c", object())


def test_torn_last_line_is_dropped(tmp_path):
    path = tmp_path / "j.jsonl"
    with Journal(path, "fp") as j:
        j.put("a", 1)
        j.put("b", 2)
    with open(path, "ab") as f:
        f.write(b'{"key":"c","val')  # a kill in the middle of a write
    with Journal(path, "fp") as j:
        assert j.note is None and j.keys() == ["a", "b"]
        j.put("c", 3)
    with Journal(path, "fp") as j:
        assert [(k, j.get(k)) for k in j.keys()] == [("a", 1), ("b", 2), ("c", 3)]
    assert path.read_text().endswith('{"key":"c","value":3}\n')


def test_other_fingerprint_or_garbage_starts_afresh(tmp_path):
    path = tmp_path / "j.jsonl"
    with Journal(path, "model A") as j:
        j.put("a", 1)
    with Journal(path, "model B") as j:
        assert "recorded for another model, data or settings; starting afresh" in j.note and len(j) == 0
    assert _lines(path) == [{"calibkit": "evaljournal", "version": 1, "fingerprint": "model B"}]
    path.write_text("hello\n")
    with Journal(path, "model B") as j:
        assert "not a calibkit evaljournal" in j.note and len(j) == 0


def test_damaged_middle_line_and_concurrent_use_are_refused(tmp_path):
    path = tmp_path / "j.jsonl"
    with Journal(path, "fp") as j:
        j.put("a", 1)
        with pytest.raises(CalibkitError, match="another calibkit run is using this evaluation journal"):
            Journal(path, "fp")
    path.write_text(path.read_text() + "garbage\n" + '{"key":"b","value":2}\n')
    with pytest.raises(CalibkitError, match=r"j.jsonl:3: damaged evaluation journal line; delete the file"):
        Journal(path, "fp")


def test_run_missing_runs_only_what_is_missing(tmp_path):
    items = et.onnx_items(3)
    keys = [f"{it['sample']}/{it['gain']}" for it in items]
    payload = (et.model_bytes(), et.inputs())
    with executor.make(workers=1, setup=et.onnx_setup, setup_args=payload) as ex:
        fresh = ex.run(et.onnx_task, items)
    with Journal(tmp_path / "j.jsonl", "fp") as j:
        j.put(keys[4], fresh[4])
        j.put(keys[1], fresh[1])
        calls = []
        with executor.make(workers=2, setup=et.onnx_setup, setup_args=payload) as ex:
            got = run_missing(
                j, ex, et.onnx_task, items, keys, on_result=lambda i, v, reused: calls.append((i, reused))
            )
        assert got == fresh
        assert sorted(calls) == [(i, i in (1, 4)) for i in range(len(items))]
        assert calls[:2] == [(1, True), (4, True)]
        assert len(j) == len(items)
        with executor.make(workers=1) as ex:  # everything recorded: nothing runs (et.fail would return the item)
            assert run_missing(j, ex, et.fail, ["x"] * len(items), keys) == fresh


def _ran(log: Path) -> list[tuple[int, int, float]]:
    return (
        [(int(p), int(s), float(g)) for p, s, g in (line.split() for line in log.read_text().splitlines())]
        if log.exists()
        else []
    )


def _journal_keys(path: Path) -> set[str]:
    if not path.exists():
        return set()
    keys = set()
    for line in path.read_text().splitlines()[1:]:
        try:
            keys.add(json.loads(line)["key"])
        except ValueError:
            pass
    return keys


@pytest.mark.parametrize(
    "sig, group", [(signal.SIGINT, True), (signal.SIGKILL, False)], ids=["ctrl-c", "kill-9-parent"]
)
def test_killed_run_resumes_with_identical_results(tmp_path, sig, group):
    """A run of 12 evaluations on 2 workers is interrupted after 4 are journalled (Ctrl-C to the
    process group, or SIGKILL to the parent alone: its workers must die with it). The re-run
    runs exactly the evaluations missing from the journal and returns what a clean run does."""
    journal, log = tmp_path / "j.jsonl", tmp_path / "first.log"
    cmd = [sys.executable, str(HERE / "exec_tasks.py"), "resume", str(journal)]
    proc = subprocess.Popen(
        [*cmd, str(log), "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        end = time.monotonic() + 60
        while len(_journal_keys(journal)) < 4:
            assert proc.poll() is None and time.monotonic() < end, proc.communicate()
            time.sleep(0.02)
        (os.killpg if group else os.kill)(proc.pid, sig)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0
    done = _journal_keys(journal)
    assert 4 <= len(done) < 12, done
    workers = {p for p, _, _ in _ran(log)}
    end = time.monotonic() + 10
    while any(
        Path(f"/proc/{p}").exists() and "Z" not in Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0]
        for p in workers
    ):
        assert time.monotonic() < end, f"worker processes {workers} outlived the killed run"
        time.sleep(0.05)

    second = tmp_path / "second.log"
    r = subprocess.run([*cmd, str(second), "2"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    resumed = json.loads(r.stdout.splitlines()[-1])
    ran_again = {f"sample={s} gain={g}" for _, s, g in _ran(second)}
    assert (
        len(ran_again) == len(_ran(second))
        and ran_again == {f"sample={it['sample']} gain={it['gain']}" for it in et.onnx_items(6)} - done
    )

    r = subprocess.run(
        [*cmd[:-1], str(tmp_path / "clean.jsonl"), str(tmp_path / "clean.log"), "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert resumed == json.loads(r.stdout.splitlines()[-1])
