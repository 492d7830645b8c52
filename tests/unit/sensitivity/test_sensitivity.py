"""sensitivity / fallback: the switchable model is exact, the hostile layer is found and kept,
the search's decisions are right on known results, outputs and errors are the CLI's."""

from __future__ import annotations

import json
from pathlib import Path

import models
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from calibkit.artifacts import scales as scales_io
from calibkit.qdq import export as qdq
from calibkit.sensitivity import search as S
from calibkit.sensitivity import switch
from calibkit.sensitivity.exclusions import regex
from calibkit.sessions import session


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CALIBKIT_CACHE", str(tmp_path / "cache"))


def test_switchable_equals_exported_exclusions(hostile, tmp_path):
    model, scales, val = hostile
    proto = onnx.load(str(model))
    amax = scales_io.read(scales).amax()
    sw = switch.build(proto, amax)
    assert [u.name for u in sw.units] == ["conv1", "conv2", "conv3", "conv4", "fc"]
    x = np.load(val)["x"][:16]
    sess = session(sw.model.SerializeToString(), device="cpu", exact_qdq=True)
    for kept in [set(), {1}, {0, 3}, {0, 1, 2, 3, 4}]:
        got = sess.run(None, {"x": x, **sw.switches(kept)})[0]
        nodes = [n for i in kept for n in sw.units[i].nodes]
        path = qdq.export_qdq(proto, amax, tmp_path / f"q{len(kept)}.onnx", exclude_nodes=regex(nodes))
        want = session(Path(path).read_bytes(), device="cpu", exact_qdq=True).run(None, {"x": x})[0]
        # equal up to float rounding: ORT fuses the plain Q/DQ graph differently (Where blocks some fusions)
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5 * float(np.abs(want).max()), err_msg=str(kept))
    fp32 = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    every = sess.run(None, {"x": x, **sw.switches(set(range(5)))})[0]
    np.testing.assert_allclose(every, fp32, rtol=1e-5, atol=1e-5)


def test_hostile_layer_ranked_first_and_kept_alone(hostile, tmp_path, cli):
    model, scales, val = hostile
    cli("sensitivity", model, "--scales", scales, "--data", val, "-o", tmp_path / "sens")
    doc = json.loads((tmp_path / "sens" / "sensitivity.json").read_text())
    assert doc["layers"][0]["layer"] == "conv2"
    assert doc["layers"][0]["only_this_int8"]["min_cosine"] < min(
        x["only_this_int8"]["min_cosine"] for x in doc["layers"][1:]
    )
    assert doc["evaluations"]["spent"] == 1 + 2 * 5
    assert (tmp_path / "sens" / "sensitivity.html").read_text().count("<img") >= 2

    r = cli("fallback", model, "--scales", scales, "--data", val, "--min-cosine", "0.999", "-o", tmp_path / "fb")
    assert "PASS" in r.stdout
    fb = tmp_path / "fb"
    assert (fb / "exclude-nodes.txt").read_text() == "conv2\n"
    assert (fb / "keep-fp16.txt").read_text() == "conv2\n"
    doc = json.loads((fb / "fallback.json").read_text())
    assert doc["pass"] and doc["search"]["met"] and [k["layer"] for k in doc["search"]["kept"]] == ["conv2"]
    ver = doc["verification"]
    assert ver["before"]["min_cosine"] < 0.999 <= ver["after"]["min_cosine"]
    # the sensitivity run's evaluations are reused (journal), not run again
    assert doc["evaluations"]["reused_from_earlier_runs"] >= 11
    # the exclusion list drives export-qdq to the same model fallback wrote
    cli(
        "export-qdq",
        model,
        "--scales",
        scales,
        "--exclude-list",
        fb / "exclude-nodes.txt",
        "-o",
        tmp_path / "again.onnx",
    )
    a = onnx.load(str(tmp_path / "again.onnx"))
    b = onnx.load(str(fb / "h.fallback.qdq.onnx"))
    assert a.graph.SerializeToString(deterministic=True) == b.graph.SerializeToString(deterministic=True)
    html = (fb / "report.html").read_text()
    assert (
        "Fallback search" in html
        and "INT8 + fallback (layers kept in float: 1)" in html
        and "calibkit export-qdq" in html
    )


def test_fallback_nothing_to_keep_when_target_already_met(hostile, tmp_path, cli):
    model, scales, val = hostile
    cli("fallback", model, "--scales", scales, "--data", val, "--min-cosine", "0.9", "-o", tmp_path / "fb")
    doc = json.loads((tmp_path / "fb" / "fallback.json").read_text())
    assert doc["pass"] and doc["exclude_nodes"] == [] and (tmp_path / "fb" / "exclude-nodes.txt").read_text() == ""


def test_bad_input_is_one_line(hostile, tmp_path, cli):
    model, scales, val = hostile
    r = cli("fallback", model, "--scales", scales, "--data", val, "--min-cosine", "2", "-o", tmp_path / "x", expect=1)
    assert "--min-cosine" in r.stderr and "Traceback" not in r.stderr
    r = cli(
        "fallback", model, "--scales", scales, "--data", val, "--max-accuracy-drop", "1", "-o", tmp_path / "x", expect=1
    )
    assert "--labels or --metric" in r.stderr
    r = cli("sensitivity", model, "--scales", scales, "--data", val, "--workers", "0", "-o", tmp_path / "x", expect=1)
    assert "--workers" in r.stderr
    bad = tmp_path / "bad.txt"
    bad.write_text("conv2\nnot_a_node\n")
    r = cli("export-qdq", model, "--scales", scales, "--exclude-list", bad, "-o", tmp_path / "q.onnx", expect=1)
    assert "not_a_node" in r.stderr and not (tmp_path / "q.onnx").exists()
    assert not (tmp_path / "x").exists()


def _fake(table: dict[tuple, float]):
    """An evaluator over known cosines (the search's logic, not a model, is under test)."""

    def run_missing(configs, on_done):
        for c in configs:
            on_done(c, {"min_cosine": table(c), "cosine": {}})

    return S.Evaluator(run_missing)


def test_search_finds_smallest_set_and_prunes():
    # unit 0 and 3 are needed; 1 and 2 are harmless; the ranking puts 1 between them
    need = {0, 3}

    def cos(kept):
        return 0.999 if need <= set(kept) else 0.9

    ev = _fake(cos)
    sens = S.Sensitivity({"min_cosine": 0.9}, [S.LayerScore(i, {}, {}) for i in (0, 1, 3, 2)], None)
    fb = S.search(ev, sens, {"min_cosine": 0.99})
    assert fb.met and sorted(fb.kept) == [0, 3]


def test_search_reports_best_when_nothing_meets():
    ev = _fake(lambda kept: 0.5 + 0.01 * len(kept))
    sens = S.Sensitivity({"min_cosine": 0.5}, [S.LayerScore(i, {}, {}) for i in range(4)], None)
    fb = S.search(ev, sens, {"min_cosine": 0.99})
    assert not fb.met and len(fb.kept) == 4 and fb.result["min_cosine"] == pytest.approx(0.54)


def test_nan_never_meets():
    assert not S.meets({"min_cosine": None}, {"min_cosine": 0.0}, None)
    assert not S.meets({"min_cosine": 1.0, "task": None}, {"max_accuracy_drop": 5.0}, 90.0)
    assert S.meets({"min_cosine": 1.0, "task": 89.0}, {"max_accuracy_drop": 5.0}, 90.0)


def test_ray_picks_the_same_layers_as_local_workers(hostile, tmp_path, cli):
    pytest.importorskip("ray")
    model, scales, val = hostile
    cli(
        "fallback",
        model,
        "--scales",
        scales,
        "--data",
        val,
        "--min-cosine",
        "0.999",
        "--workers",
        "2",
        "-o",
        tmp_path / "local",
    )
    local = json.loads((tmp_path / "local" / "fallback.json").read_text())
    # a fresh cache: Ray must run every evaluation itself, not reuse the local run's journal
    env_cache = tmp_path / "ray-cache"
    import os
    import subprocess
    import sys

    env = {**os.environ, "CALIBKIT_CACHE": str(env_cache), "COLUMNS": "80", "RAY_ADDRESS": ""}
    env.pop("RAY_ADDRESS")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "calibkit",
            "fallback",
            str(model),
            "--scales",
            str(scales),
            "--data",
            str(val),
            "--min-cosine",
            "0.999",
            "--ray",
            "auto",
            "--workers",
            "2",
            "-o",
            str(tmp_path / "ray"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    remote = json.loads((tmp_path / "ray" / "fallback.json").read_text())
    assert "Ray" in r.stdout and remote["evaluations"]["reused_from_earlier_runs"] == 0
    assert remote["exclude_nodes"] == local["exclude_nodes"] == ["conv2"]
    assert [x["layer"] for x in remote["layers"]] == [x["layer"] for x in local["layers"]]
    assert [x["only_this_int8"]["min_cosine"] for x in remote["layers"]] == [
        x["only_this_int8"]["min_cosine"] for x in local["layers"]
    ]


def test_interrupted_sensitivity_resumes_without_repeating(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    model = models.hostile_net(tmp_path / "h.onnx")
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "cal.npz", x=rng.normal(0, 1, (64, 3, 8, 8)).astype(np.float32))
    np.savez(tmp_path / "val.npz", x=rng.normal(0, 1, (6000, 3, 8, 8)).astype(np.float32))
    env = {**os.environ, "CALIBKIT_CACHE": str(tmp_path / "cache"), "COLUMNS": "80"}
    base = [sys.executable, "-m", "calibkit"]
    subprocess.run(
        [*base, "calibrate", str(model), "--data", str(tmp_path / "cal.npz"), "-o", str(tmp_path / "cal")],
        check=True,
        env=env,
        capture_output=True,
    )
    cmd = [
        *base,
        "sensitivity",
        str(model),
        "--scales",
        str(tmp_path / "cal" / "scales.json"),
        "--data",
        str(tmp_path / "val.npz"),
        "-o",
        str(tmp_path / "s"),
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    journal_dir = tmp_path / "cache" / "evaluations"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        lines = sum(len(p.read_text().splitlines()) for p in journal_dir.glob("*.jsonl")) if journal_dir.is_dir() else 0
        if lines >= 4:  # header + 3 evaluations
            proc.send_signal(signal.SIGINT)
            break
        time.sleep(0.05)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "nothing from this run was published" in err and not (tmp_path / "s").exists()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    doc = json.loads((tmp_path / "s" / "sensitivity.json").read_text())
    ev = doc["evaluations"]
    assert ev["reused_from_earlier_runs"] >= 3 and ev["run"] + ev["reused_from_earlier_runs"] == ev["spent"] == 11
    assert doc["layers"][0]["layer"] == "conv2"


def test_api_on_the_demo(tmp_path, cli):
    from calibkit import demo
    from calibkit.sensitivity import Target, fallback, sensitivity

    cli("calibrate", demo.MODEL, "--data", demo.CALIB, "--preprocess", demo.PREPROCESS, "-o", tmp_path / "cal")
    scales = tmp_path / "cal" / "scales.json"
    val = demo.VAL
    s = sensitivity(demo.MODEL, scales, val, tmp_path / "sens", labels=str(val / "labels.npy"))
    assert len(s.doc["layers"]) == 5 and s.doc["fp32_task"] is not None and s.report.is_file()
    f = fallback(
        demo.MODEL, scales, val, tmp_path / "fb", labels=str(val / "labels.npy"), target=Target(max_accuracy_drop=0.5)
    )
    assert f.doc["pass"] and f.doc["evaluations"]["reused_from_earlier_runs"] >= 11
    assert f.doc["verification"]["after"]["accuracy_drop_pp"] <= 0.5
