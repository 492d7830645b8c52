"""The batch-axis probe of a CUDA collection runs on a host session exposing only the tensors
shape inference could not place (on the GPU each new batch shape costs a convolution algorithm
search: bench/gpu_split.py). Here the session "on CUDA" is the CPU session wearing CUDA's
provider list, so the plan takes the CUDA path and the result can be compared with a plain run."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

import calibkit.collect.plan as plan_mod
from calibkit.calibration import calibrate


def reshape_net(path):
    """x [N,4,8] -> Relu -> Reshape to Shape(x) (inference cannot follow a Shape into Reshape)
    -> Mul -> y: the Reshape and Mul outputs have no inferred batch axis."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, 8])
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Reshape", ["r", "s"], ["rs"]),
        helper.make_node("Mul", ["rs", "two"], ["y"]),
    ]
    g = helper.make_graph(nodes, "g", [x], [y], [two])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    return path


class OnCuda:
    """A CPU session that says it runs on CUDA, and remembers the batch sizes it ran."""

    def __init__(self, sess):
        self.sess, self.batches = sess, []

    def get_providers(self):
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]

    def run(self, names, feed, *a, **k):
        self.batches.append(len(feed["x"]))
        return self.sess.run(names, feed, *a, **k)

    def __getattr__(self, name):
        return getattr(self.sess, name)


def test_probe_runs_on_the_host_and_changes_nothing(monkeypatch, tmp_path):
    model = reshape_net(tmp_path / "m.onnx")
    x = np.random.default_rng(0).normal(size=(13, 4, 8)).astype(np.float32)
    plain = calibrate(model, data=[{"x": x}], output_dir=tmp_path / "plain", device="cpu", batch_size=4)

    real = plan_mod.exposed_session
    made, device_sessions = [], []

    def fake(model, outputs, device, *a, **k):
        sess = real(model, outputs, device, *a, **k)
        made.append((list(outputs), device))
        if len(made) == 1:
            device_sessions.append(OnCuda(sess))
            return device_sessions[0]
        return sess

    monkeypatch.setattr(plan_mod, "exposed_session", fake)
    cuda = calibrate(model, data=[{"x": x}], output_dir=tmp_path / "cuda", device="cpu", batch_size=4)
    assert len(made) == 2, made
    exposed, (probe_outputs, probe_device) = made[0][0], made[1]
    assert probe_device == "cpu" and set(probe_outputs) == {"rs", "y"} and set(probe_outputs) < set(exposed)
    # the probe runs one sample and two through Session.run: the "device" session saw neither
    assert device_sessions[0].batches and not {1, 2} & set(device_sessions[0].batches), device_sessions[0].batches
    for name in ("m.cache", "scales.json"):
        a, b = (tmp_path / d / name for d in ("plain", "cuda"))
        assert a.read_bytes() == b.read_bytes(), name
    assert plain.outputs and cuda.outputs


def test_large_weights_probe_on_the_device(monkeypatch):
    w = onnx.TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[300, 1000, 1000])  # 1.2 GB declared, none stored
    m = helper.make_model(helper.make_graph([], "g", [], [], [w]))
    assert plan_mod.weight_bytes(m) == 1_200_000_000 > plan_mod.HOST_PROBE_WEIGHTS
    assert plan_mod._host_probe_session(m, ["t"], 0, "m", None) is None
