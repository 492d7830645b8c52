"""calibrate --devices over several GPUs warns at start-up below MULTI_GPU_BREAK_EVEN samples
(one GPU finishes first there: every GPU's worker pays its own start-up). This machine has no
GPU, so the several-GPU runs go to a Ray address where nothing listens (GPU indices are the
cluster's then): the warning comes before the run, which then fails naming the address."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from calibkit.collect.sharded import MULTI_GPU_BREAK_EVEN, few_samples_warning


def _free_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"  # nothing listens there once closed


def test_the_threshold_and_who_is_warned():
    assert MULTI_GPU_BREAK_EVEN == 900  # bench/gpu_multi.h200x2.log: two H200s win from ~893 detector images
    assert few_samples_warning(2, 899) is not None and "899 samples over 2 GPUs" in few_samples_warning(2, 899)
    assert few_samples_warning(2, 900) is None  # at the break-even: no warning
    assert few_samples_warning(1, 10) is None and few_samples_warning(0, 10) is None  # one GPU is the advice
    assert few_samples_warning(4, None) is None  # unknown count: nothing to compare


@pytest.mark.parametrize("samples, limit, warned", [(64, None, 64), (1000, 100, 100), (1000, None, None)])
def test_calibrate_warns_at_start_up_below_the_break_even(cli, conv_model, tmp_path, samples, limit, warned):
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).normal(0, 1, (samples, 3, 8, 8)).astype(np.float32))
    address = _free_address()
    args = ["calibrate", conv_model, "--data", tmp_path / "d.npz", "--devices", "0,1", "--ray", address]
    proc = cli(*args, *(["--max-samples", limit] if limit else []), "-o", tmp_path / "o", expect=None)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    err = " ".join(proc.stderr.split())
    assert f"--devices 0,1 --ray {address}" in err  # the run itself failed after the warning, at the address
    said = f"calibkit: warning: --devices: {warned} samples over 2 GPUs; below about {MULTI_GPU_BREAK_EVEN} samples"
    if warned is None:
        assert "calibkit: warning: --devices" not in err
    else:
        assert said in err and err.index(said) < err.index(f"--ray {address}")


def test_one_gpu_is_not_warned(cli, conv_model, conv_data, tmp_path):
    address = _free_address()
    args = ("calibrate", conv_model, "--data", conv_data, "--devices", "0", "--ray", address, "-o", tmp_path / "o")
    proc = cli(*args, expect=None)
    err = " ".join(proc.stderr.split())
    assert proc.returncode != 0 and f"--devices 0 --ray {address}" in err and "warning: --devices" not in err
