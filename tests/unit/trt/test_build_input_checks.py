"""Build inputs that were silently accepted (issue 21, item 10): a zero batch or a repeated
input in --shapes, random bytes as --qdq, and a cache that covers only part of what the
model's quantized layers read. Each is a one-line error naming the option; nothing written."""

from __future__ import annotations

import pytest

from calibkit.artifacts import trt_cache as cache_io


@pytest.fixture
def calibrated(cli, tmp_path, conv_model, conv_data):
    cli("calibrate", conv_model, "--data", conv_data, "--tensors", "all", "-o", tmp_path / "out")
    return tmp_path / "out" / "conv.cache"


def _trtexec(cli, model, engine, *extra, expect):
    return cli("build", model, "--engine", engine, *extra, "--print-trtexec", "--trt-major", "10", expect=expect)


def test_shapes_with_a_zero_batch_or_a_repeated_input(cli, tmp_path, conv_model, calibrated):
    e = tmp_path / "e.plan"
    r = _trtexec(cli, conv_model, e, "--int8", "--cache", calibrated, "--shapes", "x:0x3x8x8/4x3x8x8/8x3x8x8", expect=1)
    assert "--shapes" in r.stderr and ">= 1" in r.stderr
    r = _trtexec(cli, conv_model, e, "--int8", "--cache", calibrated, "--shapes", "x:1x3x8x8,x:2x3x8x8", expect=1)
    assert "twice" in r.stderr and "'x'" in r.stderr
    assert not e.exists()


def test_qdq_of_random_bytes_or_a_float_model(cli, tmp_path, conv_model):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(bytes(range(256)) * 8)
    r = cli("build", conv_model, "--engine", tmp_path / "e.plan", "--qdq", junk, "--print-trtexec", expect=1)
    assert "junk.onnx" in r.stderr and "Traceback" not in r.stderr
    r = cli("build", conv_model, "--engine", tmp_path / "e.plan", "--qdq", conv_model, "--print-trtexec", expect=1)
    assert "no QuantizeLinear" in r.stderr


def test_a_cache_covering_part_of_the_quantized_inputs(cli, tmp_path, conv_model, calibrated):
    c = cache_io.read(calibrated)
    keep = dict(list(c.scales.items())[:1])
    partial = tmp_path / "partial.cache"
    partial.write_text(calibrated.read_text().splitlines()[0] + "\n" + "".join(
        f"{k}: {line.split(': ')[1]}\n" for line in calibrated.read_text().splitlines()[1:] for k in [line.split(': ')[0]] if k in keep
    ))
    r = _trtexec(cli, conv_model, tmp_path / "e.plan", "--int8", "--cache", partial, "--shapes", "x:1x3x8x8", expect=1)
    assert "partial.cache" in r.stderr and "has no scale for" in r.stderr
    r = _trtexec(cli, conv_model, tmp_path / "e.plan", "--int8", "--cache", calibrated, "--shapes", "x:1x3x8x8", expect=0)
    assert r.stdout.startswith("trtexec")


def test_build_never_writes_over_its_inputs_or_a_users_qdq_model(cli, tmp_path, conv_model, calibrated):
    """--engine or --timing-cache equal to an input is refused; the TensorRT 11 model a build
    prepares has its own name, so a user's export-qdq output beside the engine survives."""
    cache = calibrated
    r = _trtexec(cli, conv_model, conv_model, "--int8", "--cache", cache, "--shapes", "x:1x3x8x8", expect=1)
    assert "--engine" in r.stderr and "MODEL" in r.stderr
    r = cli("build", conv_model, "--engine", tmp_path / "e.plan", "--int8", "--cache", cache, "--timing-cache", cache,
            "--shapes", "x:1x3x8x8", "--print-trtexec", "--trt-major", "10", expect=1)
    assert "--timing-cache" in r.stderr and "--cache" in r.stderr
    mine = tmp_path / "e.qdq.onnx"
    cli("export-qdq", conv_model, "--scales", cache.parent / "scales.json", "--exclude-nodes", "conv2", "-o", mine)
    before = mine.read_bytes()
    cli("build", conv_model, "--engine", tmp_path / "e.plan", "--int8", "--cache", cache, "--shapes", "x:1x3x8x8",
        "--print-trtexec", "--trt-major", "11")
    assert mine.read_bytes() == before and (tmp_path / "e.trt11.qdq.onnx").is_file()


def test_trt_version_must_match_the_command_major(cli, tmp_path, conv_model, calibrated):
    """--trt-version of another major than the printed command's (11.4.0 for a TensorRT 10
    --int8 --calib line; 10.8.0 with --trt-major 11) or of no TensorRT line (99.99.99) is refused."""
    base = ["build", conv_model, "--engine", tmp_path / "e.plan", "--int8", "--cache", calibrated,
            "--shapes", "x:1x3x8x8", "--print-trtexec"]
    r = cli(*base, "--trt-major", "10", "--trt-version", "11.4.0", expect=2)
    assert "--trt-version" in r.stderr and "TensorRT 10" in r.stderr
    r = cli(*base, "--trt-major", "11", "--trt-version", "10.8.0", expect=2)
    assert "--trt-version" in r.stderr
    r = cli(*base, "--trt-major", "10", "--trt-version", "99.99.99", expect=2)
    assert "10.x or 11.x" in r.stderr
    r = cli(*base, "--trt-major", "10", "--trt-version", "abc", expect=1)
    assert "not a TensorRT version" in r.stderr and "Traceback" not in r.stderr
    r = cli(*base, "--trt-major", "10", "--trt-version", "10.8.0", expect=0)
    assert r.stdout.startswith("trtexec")


def test_qdq_of_another_model_is_refused(cli, tmp_path, conv_model, calibrated):
    from onnx import TensorProto, helper

    other = tmp_path / "other.onnx"
    g = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["a", "s"], ["q"]), helper.make_node("DequantizeLinear", ["q", "s"], ["b"])],
        "other",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor("s", TensorProto.FLOAT, [], [0.1])],
    )
    import onnx

    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(other))
    r = cli("build", conv_model, "--engine", tmp_path / "e.plan", "--qdq", other, "--shapes", "x:1x3x8x8",
            "--print-trtexec", expect=1)
    assert "not a Q/DQ export of conv.onnx" in r.stderr
    mine = tmp_path / "q.onnx"
    cli("export-qdq", conv_model, "--scales", calibrated.parent / "scales.json", "-o", mine)
    r = cli("build", conv_model, "--engine", tmp_path / "e.plan", "--qdq", mine, "--shapes", "x:1x3x8x8",
            "--print-trtexec", expect=0)
    assert r.stdout.startswith("trtexec")
