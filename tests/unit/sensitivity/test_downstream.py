"""Downstream-only evaluation: a configuration run through only the part of the switchable
graph its changed units reach, from the base runs' cut tensors, scores exactly as the full run
of the same configuration, for every single-unit configuration of both bases and for larger
kept sets; fallback chooses the same layers with it on and off."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from calibkit.graph.model import fingerprint_file
from calibkit.sensitivity import downstream as D
from calibkit.sensitivity import evaluation as E
from calibkit.sensitivity.run import open_session


def two_heads(path: Path) -> Path:
    """conv1 -> relu -> conv2 (+ residual from relu1) -> relu -> conv3 -> GAP -> y1, and a
    second head conv4 on relu1 -> GAP -> y2: changing conv3 never reaches y2."""
    rng = np.random.default_rng(5)
    c = 6
    w = {f"w{k}": rng.normal(0, 0.4, (c, 3 if k == 1 else c, 3, 3)).astype(np.float32) for k in range(1, 5)}
    w["w1"][0] *= 40.0  # an outlier channel: INT8 hurts somewhere
    b = {f"b{k}": rng.normal(0, 0.1, c).astype(np.float32) for k in range(1, 5)}
    inits = [numpy_helper.from_array(v, k) for k, v in {**w, **b}.items()]
    conv = lambda k, x: helper.make_node("Conv", [x, f"w{k}", f"b{k}"], [f"c{k}"], pads=[1, 1, 1, 1], name=f"conv{k}")
    nodes = [
        conv(1, "x"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        conv(2, "r1"),
        helper.make_node("Add", ["c2", "r1"], ["s2"], name="add2"),
        helper.make_node("Relu", ["s2"], ["r2"], name="relu2"),
        conv(3, "r2"),
        helper.make_node("GlobalAveragePool", ["c3"], ["g3"], name="gap3"),
        helper.make_node("Flatten", ["g3"], ["y1"], name="flat3"),
        conv(4, "r1"),
        helper.make_node("GlobalAveragePool", ["c4"], ["g4"], name="gap4"),
        helper.make_node("Flatten", ["g4"], ["y2"], name="flat4"),
    ]
    graph = helper.make_graph(
        nodes,
        "two_heads",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", c]) for n in ("y1", "y2")],
        inits,
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(m, str(path))
    return path


@pytest.fixture
def session_of(tmp_path, cli):
    model = two_heads(tmp_path / "m.onnx")
    rng = np.random.default_rng(2)
    np.savez(tmp_path / "cal.npz", x=rng.normal(0, 1, (32, 3, 8, 8)).astype(np.float32))
    np.savez(tmp_path / "val.npz", x=rng.normal(0, 1, (40, 3, 8, 8)).astype(np.float32))
    cli("calibrate", model, "--data", tmp_path / "cal.npz", "-o", tmp_path / "cal")
    from calibkit.artifacts import scales

    amax = scales.read(tmp_path / "cal" / "scales.json").amax()
    return open_session(model, onnx.load(str(model)), fingerprint_file(model), amax, str(tmp_path / "val.npz"), None, None, None)


def test_downstream_equals_full_run(session_of):
    s = session_of
    n = len(s.sw.units)
    assert n == 4
    bases = D.write_bases(s.sw.model, n, s.vs.feeds)
    assert bases is not None
    try:
        configs = [tuple(i for i in range(n) if i != u) for u in range(n)] + [(u,) for u in range(n)]
        configs += [(0, 2), (1, 3), (2,), (0, 1, 3)]
        E.setup(E.payload(s.sw.model, s.vs))
        full = {c: E.task(c) for c in configs}
        E.setup(E.payload(s.sw.model, s.vs, bases))
        runner = E._STATE["downstream"]
        partial = 0
        for c in configs:
            partial += runner.plan(frozenset(c)) is not None
            assert E.task(c) == full[c], c  # bit for bit: the same kernels on the same values
        assert partial >= 6  # most configurations ran a part of the graph
        # conv3 alone (unit 2) does not reach y2: that output is the base's, and equal
        base, changed = D.base_of(frozenset([2]), n)
        idx = runner.cone.nodes_for(changed)
        outs = {t for i in idx for t in runner.cone.nodes[i].output}
        assert "y1" in outs and "y2" not in outs
        assert runner.cone.fraction(idx) < 0.5
        # the cut holds float tensors, never a quantized copy
        cut = runner.cone.cut(idx)
        assert cut and all("DequantizeLinear" not in runner.cone.nodes[runner.cone.producer[t]].op_type for t in cut if t in runner.cone.producer)
    finally:
        import shutil

        shutil.rmtree(bases.folder, ignore_errors=True)


def test_over_budget_means_full_runs(session_of):
    s = session_of
    assert D.write_bases(s.sw.model, len(s.sw.units), s.vs.feeds, budget=1000) is None


def test_fallback_is_the_same_with_and_without(cli, tmp_path, monkeypatch):
    from calibkit.errors import ThresholdFailed
    from calibkit.sensitivity import Target, fallback

    model = two_heads(tmp_path / "m.onnx")
    rng = np.random.default_rng(2)
    np.savez(tmp_path / "cal.npz", x=rng.normal(0, 1, (32, 3, 8, 8)).astype(np.float32))
    np.savez(tmp_path / "val.npz", x=rng.normal(0, 1, (40, 3, 8, 8)).astype(np.float32))
    cli("calibrate", model, "--data", tmp_path / "cal.npz", "-o", tmp_path / "cal")
    docs = []
    for mode in ("on", "off"):
        monkeypatch.setenv("CALIBKIT_CACHE", str(tmp_path / f"cache-{mode}"))
        if mode == "off":
            monkeypatch.setattr(D, "BUDGET_BYTES", 0)
        try:
            fallback(
                model, tmp_path / "cal" / "scales.json", tmp_path / "val.npz", tmp_path / f"fb-{mode}",
                target=Target(min_cosine=0.99999), workers=2,
            )
        except ThresholdFailed:
            pass
        docs.append(json.loads((tmp_path / f"fb-{mode}" / "fallback.json").read_text()))
    for k in ("ranking", "layers", "all_int8", "search", "exclude_nodes", "evaluations"):
        assert docs[0][k] == docs[1][k], k
    assert docs[0]["evaluations"]["run"] > 2 * 4  # the ranking and a search ran
