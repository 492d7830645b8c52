"""Q/DQ export inside If branches: the taken branch (nested Ifs too) gets the TensorRT placement
with the scales ORT's quantizer writes at top level; the branch never taken stays float and is
reported; the model passes onnx.checker (full) and runs in ORT close to FP32."""

from __future__ import annotations

import json
from pathlib import Path

import if_models
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from calibkit.artifacts import scales as scales_io
from calibkit.graph.subgraphs import subgraphs_of
from calibkit.qdq.export import export_qdq
from calibkit.sessions import session


def _graphs(g: onnx.GraphProto) -> dict[str, onnx.GraphProto]:
    """{graph name: graph} for ``g`` and every body under it."""
    out = {g.name: g}
    for n in g.node:
        for _, sub in subgraphs_of(n):
            out.update(_graphs(sub))
    return out


def _inits(m: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for g in _graphs(m.graph).values() for i in g.initializer}


def _qparams(m: onnx.ModelProto, graph: onnx.GraphProto, node_name: str) -> list[tuple | None]:
    """Per input of the node: (scale, zero point, INT8 weight or None) of the DequantizeLinear feeding it."""
    inits = _inits(m)
    prod = {o: n for n in graph.node for o in n.output}
    node = next(n for n in graph.node if n.name == node_name)
    out = []
    for i in node.input[:2]:
        dq = prod.get(i)
        if dq is None or dq.op_type != "DequantizeLinear":
            out.append(None)
            continue
        src = dq.input[0]
        weight = inits.get(src)
        if weight is None:  # activation: DQ <- Q <- float tensor
            q = prod[src]
            assert q.op_type == "QuantizeLinear" and q.input[1] == dq.input[1]
        out.append((inits[dq.input[1]], inits[dq.input[2]], weight))
    return out


def _run(model, feed):
    m = model if isinstance(model, str) else model.SerializeToString()
    return session(m if isinstance(m, bytes) else Path(m).read_bytes(), device="cpu", exact_qdq=True).run(None, feed)


@pytest.fixture
def exported(tmp_path, cli):
    model = if_models.if_conv_net(tmp_path / "if.onnx")
    x = np.random.default_rng(5).normal(0, 1, (24, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, sr=np.array(16000, np.int64))
    cli("calibrate", model, "--data", tmp_path / "d.npz", "-o", tmp_path / "cal", "--device", "cpu")
    out = cli("export-qdq", model, "--scales", tmp_path / "cal" / "scales.json", "-o", tmp_path / "if.qdq.onnx")
    return model, tmp_path / "if.qdq.onnx", scales_io.read(tmp_path / "cal" / "scales.json"), x, out.stdout


def test_taken_branch_quantized_with_top_level_scales(exported, tmp_path):
    model, path, table, x, stdout = exported
    onnx.checker.check_model(str(path), full_check=True)
    q = onnx.load(str(path))
    g = _graphs(q.graph)
    # the same computation flat at top level goes through ORT's quantizer: every scale, zero
    # point and INT8 weight calibkit writes inside the branches must be bit-identical
    flat = onnx.load(
        str(export_qdq(if_models.flat_net(tmp_path / "flat.onnx"), table.amax(), tmp_path / "flat.qdq.onnx"))
    )
    fg = _graphs(flat.graph)["flat_net"]
    for body, node in (("then", "then_conv"), ("inner_then", "then_matmul")):
        mine, ort_ = _qparams(q, g[body], node), _qparams(flat, fg, node)
        assert all(p is not None for p in mine), (node, mine)
        for a, b in zip(mine, ort_):
            for va, vb in zip(a, b):
                if va is None:
                    assert vb is None
                else:
                    assert va.dtype == vb.dtype and va.shape == vb.shape and va.tobytes() == vb.tobytes(), node
    x_scale, x_zp, _ = _qparams(q, g["then"], "then_conv")[0]
    assert np.float32(x_scale) == np.float32(table.tensors["x"]["scale"]) and x_zp == 0 and x_zp.dtype == np.int8
    assert np.float32(_qparams(q, g["inner_then"], "then_matmul")[0][0]) == np.float32(table.tensors["t_flat"]["scale"])
    w_scale = _qparams(q, g["then"], "then_conv")[1][0]
    np.testing.assert_allclose(w_scale, np.abs(if_models._weights()["w_out"]).reshape(8, -1).max(1) / 127, rtol=1e-6)
    # the top-level Conv (ORT's quantizer) reads x through a pair with the same scale
    assert _qparams(q, g["if_conv_net"], "top_conv")[0][0].tobytes() == x_scale.tobytes()
    # outputs left float; the weights read from the outer scope and the branch are INT8 + DQ
    assert not [n for n in g["then"].node if n.op_type == "QuantizeLinear" and n.input[0] in ("t_conv", "t_relu")]
    assert (
        "3 ops inside If branches left in float: not calibrated" in stdout
        and "2 ops inside If branches quantized" in stdout
    )


def test_untaken_branches_stay_float_and_the_model_runs(exported):
    model, path, table, x, stdout = exported
    q = onnx.load(str(path))
    g = _graphs(q.graph)
    for body in ("else", "inner_else"):
        assert not [n for n in g[body].node if n.op_type in ("QuantizeLinear", "DequantizeLinear")], body
    assert next(n for n in g["else"].node if n.name == "else_matmul").input[:] == ["e_flat", "wm_else"]
    assert next(n for n in g["else"].node if n.name == "else_conv").input[:] == ["e_x2", "w_out", "b_out"]
    assert "w_out" in {i.name for i in q.graph.initializer}  # still read by the float branch
    names = [n.name for b in g.values() for n in b.node] + [o for b in g.values() for n in b.node for o in n.output]
    assert len(names) == len(set(names))
    feed = {"x": x[:6], "sr": np.array(16000, np.int64)}
    ref, got = _run(onnx.load(str(model)), feed), _run(str(path), feed)
    for r, o in zip(ref, got):
        cos = float(np.dot(r.ravel(), o.ravel()) / (np.linalg.norm(r) * np.linalg.norm(o)))
        assert cos > 0.999 and np.abs(o - r).max() < 0.05 * np.abs(r).max()
        assert not np.array_equal(o, r)  # INT8 emulation really ran
    other = {"x": x[:6], "sr": np.array(8000, np.int64)}  # the float branch: exact FP32 results
    np.testing.assert_array_equal(_run(str(path), other)[1], _run(onnx.load(str(model)), other)[1])


def test_exclude_nodes_reaches_into_branches(exported, tmp_path, cli):
    model, _, _, _, _ = exported
    out = tmp_path / "ex.qdq.onnx"
    r = cli(
        "export-qdq", model, "--scales", tmp_path / "cal" / "scales.json", "-o", out, "--exclude-nodes", "^then_conv$"
    )
    assert "1 ops inside If branches quantized" in r.stdout
    q = onnx.load(str(out))
    assert next(n for n in _graphs(q.graph)["then"].node if n.name == "then_conv").input[:] == ["x", "w_out", "b_out"]
    assert _qparams(q, _graphs(q.graph)["inner_then"], "then_matmul")[0] is not None


def test_scales_json_lists_untaken_branch(exported, tmp_path):
    doc = json.loads((tmp_path / "cal" / "scales.json").read_text())
    assert {"t_flat", "t_out"} <= set(doc["tensors"])
    assert "t_conv" in doc["tensors"] or doc["skipped"]["t_conv"].startswith("inside the fused Conv layer")
    assert "never takes" in doc["uncalibrated"]["e_conv"]


def test_loop_body_ops_on_outer_tensors_quantized_carried_ones_float(tmp_path):
    from calibkit.calibration import calibrate

    model = if_models.loop_matmul_net(tmp_path / "loop.onnx")
    x = np.random.default_rng(2).normal(0, 1, (16, 4)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x)
    calibrate(model, tmp_path / "d.npz", output_dir=tmp_path / "cal", device="cpu")
    table = scales_io.read(tmp_path / "cal" / "scales.json")
    notes: list[str] = []
    path = export_qdq(model, table.amax(), tmp_path / "loop.qdq.onnx", notes=notes)
    assert (
        "1 ops inside Loop bodies quantized" in notes
        and "1 ops inside Loop bodies left in float: not calibrated" in notes
    )
    onnx.checker.check_model(str(path), full_check=True)
    q = onnx.load(str(path))
    body = _graphs(q.graph)["body"]
    assert _qparams(q, body, "carried_matmul") == [None, None]  # acc_in changes every trip: no scale
    (xs, _, _), (ws, _, wq) = _qparams(q, body, "outer_matmul")
    assert np.float32(xs) == np.float32(table.tensors["x"]["scale"]) and wq.dtype == np.int8 and ws.shape == (4,)
    ref, got = _run(onnx.load(str(model)), {"x": x}), _run(str(path), {"x": x})
    np.testing.assert_allclose(got[0], ref[0], atol=0.05 * np.abs(ref[0]).max())


def test_if_condition_graph_input_and_branch_reading_an_outer_activation(tmp_path, cli):
    """A rank-0 condition fed by the data (not computed): calibrate inlines the branch it takes
    (it used to ask ORT for the graph input as an output: "Invalid output name"); export-qdq
    quantizes the branch's Conv on the outer activation ``a`` and the result is topologically
    sorted with the branch's outer reads (ORT's quantizer put the If before ``a``'s producer:
    onnx.checker failed)."""
    model = if_models.if_input_cond_net(tmp_path / "ifin.onnx")
    x = np.random.default_rng(1).normal(size=(16, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, cond=np.array(True))
    cli("calibrate", model, "--data", tmp_path / "d.npz", "-o", tmp_path / "cal")
    doc = json.loads((tmp_path / "cal" / "scales.json").read_text())
    assert {"a", "yt"} <= set(doc["tensors"])
    out = tmp_path / "ifin.qdq.onnx"
    r = cli("export-qdq", model, "--scales", tmp_path / "cal" / "scales.json", "-o", out)
    assert "1 ops inside If branches quantized" in r.stdout
    q = onnx.load(str(out))
    onnx.checker.check_model(q, full_check=True)
    order = [n.name for n in q.graph.node]
    assert order.index("conv1") < order.index("branch")
    assert _qparams(q, _graphs(q.graph)["then"], "then_conv")[0] is not None
    for cond in (True, False):
        feed = {"x": x[:4], "cond": np.array(cond)}
        ref, got = _run(str(model), feed)[0], _run(str(out), feed)[0]
        assert np.corrcoef(ref.ravel(), got.ravel())[0, 1] > 0.999
        assert not np.array_equal(ref, got)


def test_topo_sort_follows_outer_reads_and_keeps_every_node(tmp_path):
    from calibkit.graph.subgraphs import topo_sort

    m = onnx.load(str(if_models.if_input_cond_net(tmp_path / "m.onnx")))
    g = m.graph
    nodes = list(g.node)
    del g.node[:]
    g.node.extend([nodes[1], nodes[0]])  # the If first, as ORT's quantizer leaves it
    extra = onnx.helper.make_node("Relu", ["y"], ["z"], name="after")
    g.node.insert(0, extra)  # reads the If's output: must end up last
    assert topo_sort(g) == []
    assert [n.name for n in g.node] == ["conv1", "branch", "after"]
    dangling = onnx.helper.make_node("Relu", ["nowhere"], ["w"], name="dangling")
    g.node.insert(0, dangling)
    assert topo_sort(g) == [] and [n.name for n in g.node][-1] == "after"  # an unknown name is not a producer
