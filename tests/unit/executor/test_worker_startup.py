"""A worker that dies before reading its start-up data never hangs the run (attack 5 of session
5: `fallback --workers 2` under `timeout -s TERM` hung for good). multiprocessing writes a
worker's start-up data to its pipe while the parent itself still holds the pipe's read end, so a
write larger than the pipe to a worker already dead blocks forever; the run's setup (megabytes)
now goes to the workers in a file."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = r"""
import multiprocessing.spawn as sp
import os, stat, sys, tempfile

from calibkit.errors import CalibkitError
from calibkit.executor.local import ProcessPool

# workers start and exit at once without reading their start-up data; the resource tracker runs
wrapper = os.path.join(tempfile.mkdtemp(), "python")
with open(wrapper, "w") as fh:
    fh.write(f'#!/bin/sh\ncase "$*" in *spawn_main*) exit 0;; esac\nexec {sys.executable} "$@"\n')
os.chmod(wrapper, stat.S_IRWXU)
sp.set_executable(wrapper)


def task(x):
    return x


with ProcessPool(2, setup=print, setup_args=(b"x" * 8_000_000,)) as pool:
    try:
        list(pool.map(task, [1, 2, 3]))
    except CalibkitError as exc:
        print("error:", exc)
    finally:
        pool.close(abort=True)
print("done")
"""


def test_a_worker_dead_before_reading_its_start_up_data_does_not_hang_the_run(tmp_path):
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "a worker process died" in r.stdout and r.stdout.rstrip().endswith("done"), r.stdout
