"""Verdicts fail closed; validation uses the calibration's preprocessing; advice can be pasted;
summaries read at 80 columns."""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from calibkit import demo
from calibkit.validate.engine import CandidateResult, Evaluation
from calibkit.validate.metrics import OutputMetrics, with_noise
from calibkit.validate.results import Gates, rank, ranks, verdict


def _ev(cands, samples=100, task=None):
    ref = CandidateResult("ort-fp32", "ort-fp32", "", None)
    return Evaluation(ref, cands, samples, "fp", "d", task, 0.0)


def _cand(label, ref, out, scores=None):
    c = CandidateResult(label, "ort-int8", "", "m")
    c.outputs["y"] = OutputMetrics()
    c.outputs["y"].add(ref, out)
    if scores is not None:
        c.add_scores(np.asarray(scores, float))
    return c


def test_nan_metrics_fail_every_gate():
    ref = np.ones((4, 3), np.float32)
    c = _cand("nan", ref, np.zeros((4, 3), np.float32))  # cosine 0/0, SQNR of a zero candidate
    c.outputs["y"].agree.err2 = float("nan")
    ev = _ev([c])
    ok, why = verdict(ev, c, {"min_sqnr": 30.0, "min_cosine": 0.5})
    assert not ok and any("SQNR" in w for w in why) and any("cosine" in w for w in why)


def test_no_compared_output_is_a_failure():
    c = CandidateResult("empty", "ort-int8", "", "m")
    ok, why = verdict(_ev([c]), c, {"min_cosine": 0.9})
    assert not ok and "no output was compared" in why[0]


def test_default_gates_apply_when_none_is_given():
    assert Gates().applied(has_task=True) == ({"min_cosine": 0.99, "max_accuracy_drop": 1.0}, True)
    assert Gates().applied(has_task=False) == ({"min_cosine": 0.99}, True)
    assert Gates(min_sqnr=20).applied(True) == ({"min_sqnr": 20}, False)


def test_ties_by_one_sample_and_by_noise():
    ref = np.ones((4, 3), np.float32)
    n = 200
    rng = np.random.default_rng(0)
    base = (rng.random(n) < 0.9).astype(float)
    one_off = base.copy()
    one_off[np.flatnonzero(base)[0]] = 0  # one sample fewer: tied
    much_worse = base * (rng.random(n) < 0.5)  # loses half: not tied
    a, b, c = _cand("a", ref, ref, base), _cand("b", ref, ref * 0.99, one_off), _cand("c", ref, ref * 0.9, much_worse)
    ev = _ev([c, b, a], samples=n, task="top-1 accuracy vs labels")
    order = rank(ev)
    assert [r.label for r in order] == ["a", "b", "c"]
    assert ranks(ev, order) == ["1=", "1=", "3"]


@pytest.mark.parametrize(
    "value,noise,text",
    [(12.3456, 0.4, "12.3±0.4"), (12.3456, 0.04, "12.35±0.04"), (1234.5, 30.0, "1230±30"), (0.512, None, "0.51")],
)
def test_latency_shown_to_its_noise(value, noise, text):
    assert with_noise(value, noise) == text


def _demo_cal(cli, tmp_path):
    out = tmp_path / "cal"
    cli("calibrate", demo.MODEL, "--data", demo.CALIB, "--preprocess", demo.PREPROCESS, "-o", out)
    return out / "scales.json"


def test_validate_uses_the_calibration_preprocessing(cli, tmp_path):
    scales = _demo_cal(cli, tmp_path)
    # the README's command, no --channels L: the preprocessing recorded in scales.json is used
    r = cli(
        "validate",
        demo.MODEL,
        "--scales",
        scales,
        "--data",
        demo.VAL,
        "--labels",
        demo.VAL / "labels.npy",
        "--backends",
        "ort-int8",
        "--report",
        tmp_path / "r.html",
    )
    doc = json.loads((tmp_path / "r.results.json").read_text())
    assert doc["candidates"][0]["accuracy"] > 95 and doc["pass"] and doc["gates_default"]
    assert "gates: min_cosine 0.99, max_accuracy_drop 1.0 (defaults" in r.stdout


def test_preprocess_mismatch_is_an_error_unless_allowed(cli, tmp_path):
    scales = _demo_cal(cli, tmp_path)
    r = cli(
        "validate",
        demo.MODEL,
        "--scales",
        scales,
        "--data",
        demo.VAL,
        "--labels",
        demo.VAL / "labels.npy",
        "--backends",
        "ort-int8",
        "--report",
        tmp_path / "r.html",
        "--channels",
        "L",
        "--scale",
        "1",
        expect=1,
    )
    assert "differs from the calibration preprocessing" in r.stderr and "scale 1.0 vs calibration's 0.00392" in r.stderr
    assert not (tmp_path / "r.html").exists()


def test_badly_preprocessed_validation_fails_with_default_gates_and_says_check_your_data(cli, tmp_path):
    scales = _demo_cal(cli, tmp_path)
    r = cli(
        "validate",
        demo.MODEL,
        "--scales",
        scales,
        "--data",
        demo.VAL,
        "--labels",
        demo.VAL / "labels.npy",
        "--backends",
        "ort-int8",
        "--report",
        tmp_path / "r.html",
        "--channels",
        "L",
        "--scale",
        "1",
        "--mean",
        "128",
        "--allow-preprocess-mismatch",
        expect=3,
    )
    assert "FAIL ort-int8 (entropy):" in r.stdout and "(min_cosine)" in r.stdout
    assert "check your data" in r.stdout
    assert "failed the gates: ort-int8 (entropy) (" in r.stderr
    assert "Check your data" in (tmp_path / "r.html").read_text()


def test_min_sqnr_gate_prints_value_and_limit(cli, tmp_path):
    scales = _demo_cal(cli, tmp_path)
    r = cli(
        "validate",
        demo.MODEL,
        "--scales",
        scales,
        "--data",
        demo.VAL,
        "--backends",
        "ort-int8",
        "--report",
        tmp_path / "r.html",
        "--min-sqnr",
        "80",
        expect=3,
    )
    assert re.search(r"FAIL ort-int8 \(entropy\): \S+: SQNR [\d.]+ dB < 80.0 dB \(min_sqnr\)", r.stdout), r.stdout


def test_tables_read_at_80_columns(cli, tmp_path):
    hist = _demo_cal(cli, tmp_path).parent / "histograms.npz"
    r = cli(
        "compare",
        demo.MODEL,
        "--histograms",
        hist,
        "--data",
        demo.VAL,
        "--labels",
        demo.VAL / "labels.npy",
        "--report",
        tmp_path / "c.html",
        "--methods",
        "entropy,percentile:99.999,percentile:99.99",
        expect=None,
    )
    assert r.returncode in (0, 3), r.stderr
    lines = r.stdout.splitlines()
    table = [ln for ln in lines if re.match(r"^(#|-|\d+=?) +\S", ln) or "───" in ln]
    assert len(table) >= 5 and max(len(ln) for ln in table) <= 80  # plain lines soft-wrap; tables fit
    rows = [ln for ln in lines if "ort-int8 (" in ln and ("PASS" in ln or "FAIL" in ln)]
    assert len(rows) == 3 and {"ort-int8 (percentile:99.999)", "ort-int8 (percentile:99.99)", "ort-int8 (entropy)"} <= {
        re.search(r"ort-int8 \([^)]*\)", ln).group(0) for ln in rows
    }


def _pasted(report: Path) -> list[str]:
    return [html.unescape(m) for m in re.findall(r'<pre class="paste">(.*?)</pre>', report.read_text(), re.S)]


def test_compare_writes_each_method_and_every_pasted_command_runs(cli, tmp_path):
    hist = _demo_cal(cli, tmp_path).parent / "histograms.npz"
    out = tmp_path / "methods"
    report = tmp_path / "c.html"
    # a strict fallback budget so the report advises keeping layers in FP16
    cli(
        "compare",
        demo.MODEL,
        "--histograms",
        hist,
        "--data",
        demo.VAL,
        "--labels",
        demo.VAL / "labels.npy",
        "--report",
        report,
        "--methods",
        "entropy,percentile:99",
        "-o",
        out,
        "--export-qdq",
        "--fallback-sqnr",
        "60",
        expect=None,
    )
    for m in ("entropy", "percentile-99"):
        for f in ("scales.json", "digits_cnn.cache", "digits_cnn.tensors.json", "digits_cnn.qdq.onnx"):
            assert (out / m / f).is_file(), (m, f)
    assert json.loads((out / "percentile-99" / "scales.json").read_text())["method"]["params"]["percentile"] == 99.0
    cmds = _pasted(report)
    assert cmds, "the report should advise an FP16 fallback here"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    for cmd in cmds:
        assert cmd.startswith("calibkit export-qdq ")
        r = subprocess.run(cmd, shell=True, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 0, (cmd, r.stderr)
    assert any(p.name.endswith(".fp16-fallback.qdq.onnx") for p in (out / "percentile-99").iterdir())


def test_validate_pasted_command_runs(cli, tmp_path):
    scales = _demo_cal(cli, tmp_path)
    report = tmp_path / "v.html"
    cli(
        "validate",
        demo.MODEL,
        "--scales",
        scales,
        "--data",
        demo.VAL,
        "--backends",
        "ort-int8",
        "--report",
        report,
        "--fallback-sqnr",
        "60",
        expect=None,
    )
    cmds = _pasted(report)
    assert cmds
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    for cmd in cmds:
        r = subprocess.run(cmd, shell=True, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 0, (cmd, r.stderr)


def test_shuffled_labels_fail_the_accuracy_gate(cli, tmp_path):
    scales = _demo_cal(cli, tmp_path)
    lab = np.load(demo.VAL / "labels.npy")
    np.save(tmp_path / "shuf.npy", np.random.default_rng(0).permutation(lab))
    r = cli(
        "validate",
        demo.MODEL,
        "--scales",
        scales,
        "--data",
        demo.VAL,
        "--labels",
        tmp_path / "shuf.npy",
        "--backends",
        "ort-int8",
        "--report",
        tmp_path / "r.html",
        expect=3,
    )
    assert "accuracy cannot be judged" in r.stdout and "at chance level" in r.stdout
