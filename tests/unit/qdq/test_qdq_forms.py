"""Q/DQ export of the graph forms real exporters write: Constant-node weights, old opsets,
float16 graphs, external data; the written model always passes onnx.checker and loads in ORT."""

from __future__ import annotations

import hashlib
from pathlib import Path

import models
import numpy as np
import onnx
import pytest
import qdq_models
from onnx import TensorProto, numpy_helper

from calibkit.artifacts import scales as scales_io
from calibkit.calibration import calibrate
from calibkit.errors import CalibkitError
from calibkit.qdq.export import activation_qdq, export_qdq
from calibkit.sessions import session


def _cal(model, data, out, method="entropy"):
    calibrate(model, data, output_dir=out, method=method)
    return scales_io.read(out / "scales.json")


def _structure(q: onnx.ModelProto) -> list[tuple]:
    """Op types and inputs of every node, with weight scales as values (names aside)."""
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    rows = []
    for n in q.graph.node:
        vals = tuple(inits[i].tobytes() if i in inits and i.endswith(("_scale", "_quantized")) else i for i in n.input)
        rows.append((n.op_type, vals))
    return sorted(rows, key=repr)


def _run(path, feed):
    return session(Path(path).read_bytes(), device="cpu", exact_qdq=True, external_dir=str(Path(path).parent)).run(
        None, feed
    )


def test_constant_node_weights_give_the_same_scales_and_qdq_model(conv_model, conv_data, tmp_path):
    const = qdq_models.as_constant_nodes(conv_model, tmp_path / "const.onnx")
    before = hashlib.sha256(const.read_bytes()).hexdigest()
    a, b = _cal(conv_model, conv_data, tmp_path / "a"), _cal(const, conv_data, tmp_path / "b")
    assert {t: v["scale"] for t, v in a.tensors.items()} == {t: v["scale"] for t, v in b.tensors.items()}
    notes: list[str] = []
    qa = onnx.load(str(export_qdq(conv_model, a.amax(), tmp_path / "a.qdq.onnx")))
    qb = onnx.load(str(export_qdq(const, b.amax(), tmp_path / "b.qdq.onnx", notes=notes)))
    assert any("Constant" in n for n in notes)
    assert {t: s for t, (_, s) in activation_qdq(qa).items()} == {t: s for t, (_, s) in activation_qdq(qb).items()}
    assert _structure(qa) == _structure(qb)
    assert hashlib.sha256(const.read_bytes()).hexdigest() == before  # the original is never modified
    x = np.load(conv_data)["x"][:4]
    np.testing.assert_array_equal(
        _run(tmp_path / "a.qdq.onnx", {"x": x})[0], _run(tmp_path / "b.qdq.onnx", {"x": x})[0]
    )


def test_constant_node_model_missing_scales_names_the_activation(conv_model, conv_data, tmp_path):
    const = qdq_models.as_constant_nodes(conv_model, tmp_path / "const.onnx")
    amax = _cal(const, conv_data, tmp_path / "c").amax()
    del amax["r1"]
    with pytest.raises(CalibkitError, match="no entry for activation 'r1'"):
        export_qdq(const, amax, tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_opset_11_is_upgraded_for_per_channel_qdq(conv_model, conv_data, tmp_path):
    old = qdq_models.with_opset(conv_model, tmp_path / "op11.onnx", 11)
    table = _cal(old, conv_data, tmp_path / "c")
    notes: list[str] = []
    q = onnx.load(str(export_qdq(old, table.amax(), tmp_path / "q.onnx", notes=notes)))
    assert any("opset 11 converted to 13" in n for n in notes)
    assert next(o.version for o in q.opset_import if o.domain == "") >= 13
    axes = [a.i for n in q.graph.node if n.op_type == "DequantizeLinear" for a in n.attribute if a.name == "axis"]
    assert axes  # per-channel weights
    x = np.load(conv_data)["x"][:4]
    ref = _run(old, {"x": x})[0]
    assert np.abs(_run(tmp_path / "q.onnx", {"x": x})[0] - ref).max() < 0.1 * np.abs(ref).max()


def test_opset_upgrade_failure_is_one_line(conv_model, conv_data, tmp_path, monkeypatch):
    old = qdq_models.with_opset(conv_model, tmp_path / "op11.onnx", 11)
    table = _cal(old, conv_data, tmp_path / "c")
    from onnx import version_converter

    def boom(*a, **k):
        raise RuntimeError("No adapter for op Foo\nmore")

    monkeypatch.setattr(version_converter, "convert_version", boom)
    with pytest.raises(
        CalibkitError, match=r"opset 11; per-channel Q/DQ needs opset >= 13 .*No adapter for op Foo\); re-export"
    ) as err:
        export_qdq(old, table.amax(), tmp_path / "q.onnx")
    assert "\n" not in str(err.value)


@pytest.fixture
def fp16(conv_model, tmp_path):
    path = qdq_models.as_float16(conv_model, tmp_path / "half.onnx")
    data = tmp_path / "half.npz"
    np.savez(data, x=np.random.default_rng(3).normal(0, 1, (16, 3, 8, 8)).astype(np.float16))
    return path, data


def test_float16_graph_gets_float16_scales_and_loads(fp16, tmp_path):
    path, data = fp16
    table = _cal(path, data, tmp_path / "c", method="minmax")  # 16 samples: entropy clips the pooled features hard
    notes: list[str] = []
    out = export_qdq(path, table.amax(), tmp_path / "q.onnx", notes=notes)
    q = onnx.load(str(out))
    inits = {i.name: i for i in q.graph.initializer}
    qs = [n for n in q.graph.node if n.op_type == "QuantizeLinear"]
    assert qs and all(inits[n.input[1]].data_type == TensorProto.FLOAT16 for n in qs)
    for tensor, (_, scale) in activation_qdq(q).items():
        assert np.float16(scale) == np.float16(table.tensors[tensor]["scale"])
    x = np.load(data)["x"][:4]
    got, ref = _run(out, {"x": x})[0], _run(path, {"x": x})[0]
    assert got.dtype == np.float16 and np.abs(got.astype(np.float32) - ref).max() < 0.15 * np.abs(ref).max()


def test_model_ort_cannot_load_is_never_written(fp16, tmp_path, monkeypatch):
    from calibkit.qdq import post as qdq_post

    path, data = fp16
    table = _cal(path, data, tmp_path / "c")
    monkeypatch.setattr(qdq_post, "float16_scales", lambda q, half: 0)  # what export did before
    with pytest.raises(CalibkitError, match="does not load in ONNX Runtime"):
        export_qdq(path, table.amax(), tmp_path / "q.onnx")
    assert not (tmp_path / "q.onnx").exists()


def test_external_data_model_exports_with_external_data(tmp_path):
    src = tmp_path / "ext"
    src.mkdir()
    plain = models.wide_net(
        tmp_path / "wide.onnx", layers=3, width=64
    )  # 4 KiB INT8 weights: above ORT's inline threshold
    ext = qdq_models.with_external_data(plain, src / "m.onnx")
    listing = sorted(p.name for p in src.iterdir())
    data = tmp_path / "x.npz"
    np.savez(data, x=np.random.default_rng(1).normal(0, 1, (16, 64)).astype(np.float32))
    table = _cal(ext, data, tmp_path / "c")
    out = export_qdq(ext, table.amax(), tmp_path / "o" / "m.qdq.onnx")
    assert len(list((tmp_path / "o").glob("m.qdq.onnx.*.data"))) == 1  # named by its content (issue 21)
    light = onnx.load(str(out), load_external_data=False)
    assert any(i.data_location == TensorProto.EXTERNAL for i in light.graph.initializer)
    assert sorted(p.name for p in src.iterdir()) == listing  # nothing written beside the source
    x = np.load(data)["x"][:4]
    ref = onnx.load(str(export_qdq(plain, table.amax(), tmp_path / "inline.onnx")))
    np.testing.assert_array_equal(_run(out, {"x": x})[0], _run(tmp_path / "inline.onnx", {"x": x})[0])
    assert {t: s for t, (_, s) in activation_qdq(onnx.load(str(out))).items()} == {
        t: s for t, (_, s) in activation_qdq(ref).items()
    }


def test_export_qdq_cli_forms(cli, conv_model, conv_data, tmp_path):
    const = qdq_models.as_constant_nodes(conv_model, tmp_path / "const.onnx")
    cli("calibrate", const, "--data", conv_data, "-o", tmp_path / "cal")
    r = cli("export-qdq", const, "--scales", tmp_path / "cal/scales.json", "-o", tmp_path / "q.onnx")
    assert (
        "Constant nodes taken as initializers" in r.stdout
        and "3 quantized activations" in r.stdout
        and "residual Add" in r.stdout
    )
    plain = models.wide_net(tmp_path / "wide.onnx", layers=2, width=64)
    ext = qdq_models.with_external_data(plain, tmp_path / "ext.onnx")
    np.savez(tmp_path / "x.npz", x=np.random.default_rng(1).normal(0, 1, (16, 64)).astype(np.float32))
    cli("calibrate", ext, "--data", tmp_path / "x.npz", "-o", tmp_path / "cal2")
    r = cli("export-qdq", ext, "--scales", tmp_path / "cal2/scales.json", "-o", tmp_path / "e.qdq.onnx")
    assert "e.qdq.onnx + e.qdq.onnx." in r.stdout and ".data:" in r.stdout
