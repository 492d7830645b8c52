"""Setup and task functions for the executor tests (imported by worker processes and Ray
actors, so module-level), and a command-line driver for the tests that kill a run:

    python exec_tasks.py interrupt local|ray LOGDIR
    python exec_tasks.py resume JOURNAL LOGFILE WORKERS
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from calibkit import executor  # noqa: E402
from calibkit.errors import CalibkitError  # noqa: E402

# ---------------------------------------------------------------- a real ONNX workload


def model_bytes() -> bytes:
    import models

    with tempfile.TemporaryDirectory() as d:
        return models.conv_net(Path(d) / "m.onnx").read_bytes()


def inputs(n: int = 8) -> np.ndarray:
    return np.random.default_rng(7).normal(0, 1, (n, 2, 3, 8, 8)).astype(np.float32)


def onnx_setup(blob: bytes | Payload, xs: np.ndarray, log: str | None = None) -> dict:
    """An ORT session from the model bytes (a counting Payload of them for the payload tests)."""
    import onnxruntime as ort

    global SETUPS
    SETUPS += 1
    blob = blob.blob if isinstance(blob, Payload) else blob

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    session = ort.InferenceSession(blob, so, providers=["CPUExecutionProvider"])
    return {"session": session, "xs": xs, "log": log}


def onnx_task(item: dict) -> dict:
    """Run sample item['sample'] scaled by item['gain']; return the output and its checksum."""
    st = executor.state()
    if st["log"]:
        with open(st["log"], "a") as f:
            f.write(f"{os.getpid()} {item['sample']} {item['gain']}\n")
        time.sleep(item.get("sleep", 0.0))
    y = st["session"].run(None, {"x": st["xs"][item["sample"]] * np.float32(item["gain"])})[0]
    return {
        "sha": hashlib.sha256(y.tobytes()).hexdigest(),
        "y": [float(v) for v in y.ravel()],
        "sum": float(y.astype(np.float64).sum()),
    }


def onnx_items(n: int = 8, sleep: float = 0.0) -> list[dict]:
    return [{"sample": i, "gain": g, "sleep": sleep} for i in range(n) for g in (0.5, 2.0)]


# ---------------------------------------------------------------- counting what reaches a worker

SETUPS = 0
LOADS = 0


def _restore(blob: bytes) -> Payload:
    global LOADS
    LOADS += 1
    return Payload(blob)


class Payload:
    """Counts how often it is unpickled in the process that receives it."""

    def __init__(self, blob: bytes) -> None:
        self.blob = blob

    def __reduce__(self):
        return (_restore, (self.blob,))


def counting_setup(payload: Payload) -> Payload:
    global SETUPS
    SETUPS += 1
    return payload


def who(item: int) -> dict:
    """Which worker ran the item, and how often setup ran and the payload arrived there."""
    time.sleep(0.02)
    st = executor.state()
    size = len(st.blob) if isinstance(st, Payload) else st["session"] is not None
    return {"pid": os.getpid(), "setups": SETUPS, "loads": LOADS, "size": size, "item": item}


# ---------------------------------------------------------------- failures


def fail(item: str):
    if item == "calibkit":
        raise CalibkitError("layer conv1: scale is NaN; recalibrate")
    if item == "bug":
        return {}["missing"]
    if item == "die":
        os._exit(7)
    if item == "kill":
        os.kill(os.getpid(), 9)
    return item


def failing_setup(kind: str):
    if kind == "calibkit":
        raise CalibkitError("model.onnx: not an ONNX model")
    raise ValueError("bad payload")


# ---------------------------------------------------------------- slow tasks for the interrupt test


def slow_setup(log: str) -> str:
    return log


def slow(item: int) -> int:
    with open(executor.state(), "a") as f:
        f.write(f"{os.getpid()} {item}\n")
    time.sleep(60)
    return item


def _children() -> list[str]:
    """This process's live children, but multiprocessing's resource tracker (it ends with us)."""
    me, out = os.getpid(), []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == me:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                if "resource_tracker" not in cmd:
                    out.append(f"{d.name} {cmd}")
        except (OSError, IndexError, ValueError):
            pass
    return out


def main(argv: list[str]) -> int:
    if argv[0] == "interrupt":
        kind, logdir = argv[1], Path(argv[2])
        ex = executor.make(
            workers=2, ray="auto" if kind == "ray" else None, setup=slow_setup, setup_args=(str(logdir / "tasks.log"),)
        )
        try:
            with ex:
                print("temp_dir", getattr(ex, "temp_dir", None), flush=True)
                for _ in ex.map(slow, list(range(6))):
                    pass
        except KeyboardInterrupt:
            print("interrupted; children:", json.dumps(_children()), flush=True)
            return 130
        return 0
    if argv[0] == "resume":
        journal_path, log, workers = argv[1], argv[2], int(argv[3])
        from calibkit.executor.journal import Journal, run_missing

        items = onnx_items(6, sleep=0.25)
        keys = [f"sample={it['sample']} gain={it['gain']}" for it in items]
        with Journal(journal_path, fingerprint="conv_net seed 0 / inputs seed 7") as journal:
            if journal.note:
                print("note:", journal.note, flush=True)
            with executor.make(workers=workers, setup=onnx_setup, setup_args=(model_bytes(), inputs(), log)) as ex:
                results = run_missing(journal, ex, onnx_task, items, keys)
        print(json.dumps(results, sort_keys=True))
        return 0
    raise SystemExit(f"unknown mode {argv[0]}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
