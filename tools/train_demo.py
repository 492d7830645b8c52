"""Train the shipped demo: a small residual CNN on scikit-learn's handwritten digits.

Writes ``calibkit/demo/digits_cnn.onnx``, the calibration split to ``calibration_data/digits_cnn/``
(``calibkit/demo/digits/calib`` links to it, so the package ships it) and the validation split to
``calibkit/demo/digits/val/`` (8x8 grayscale PNGs + labels.npy), plus ``preprocess.json`` in both.
The ONNX graph is written node by node from the trained weights, so it keeps its
Conv / BatchNormalization / Relu / Add / MaxPool / GlobalAveragePool / Gemm structure.

    pip install torch==2.13.0 scikit-learn && python tools/train_demo.py
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from sklearn.datasets import load_digits
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
SEED = 0


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.c2, self.b2 = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.c3, self.b3 = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.c4, self.b4 = nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        r = torch.relu(self.b1(self.c1(x)))
        y = torch.relu(self.b2(self.c2(r)))
        y = torch.relu(self.b3(self.c3(y)) + r)
        y = torch.max_pool2d(y, 2)
        y = torch.relu(self.b4(self.c4(y)))
        return self.fc(y.mean(dim=(2, 3)))


def to_pixels(images: np.ndarray) -> np.ndarray:
    return np.round(images * 255.0 / 16.0).astype(np.uint8)


def export(net: Net, path: Path) -> None:
    inits, nodes = [], []

    def w(name, t):
        inits.append(numpy_helper.from_array(t.detach().numpy().astype(np.float32), name))
        return name

    def conv_bn(i, x, out):
        c, b = getattr(net, f"c{i}"), getattr(net, f"b{i}")
        nodes.append(
            helper.make_node(
                "Conv",
                [x, w(f"conv{i}.weight", c.weight), w(f"conv{i}.bias", c.bias)],
                [f"conv{i}"],
                name=f"conv{i}",
                pads=[1, 1, 1, 1],
                kernel_shape=[3, 3],
            )
        )
        nodes.append(
            helper.make_node(
                "BatchNormalization",
                [
                    f"conv{i}",
                    w(f"bn{i}.scale", b.weight),
                    w(f"bn{i}.bias", b.bias),
                    w(f"bn{i}.mean", b.running_mean),
                    w(f"bn{i}.var", b.running_var),
                ],
                [out],
                name=f"bn{i}",
                epsilon=b.eps,
            )
        )

    conv_bn(1, "image", "bn1")
    nodes.append(helper.make_node("Relu", ["bn1"], ["relu1"], name="relu1"))
    conv_bn(2, "relu1", "bn2")
    nodes.append(helper.make_node("Relu", ["bn2"], ["relu2"], name="relu2"))
    conv_bn(3, "relu2", "bn3")
    nodes.append(helper.make_node("Add", ["bn3", "relu1"], ["residual"], name="residual_add"))
    nodes.append(helper.make_node("Relu", ["residual"], ["relu3"], name="relu3"))
    nodes.append(helper.make_node("MaxPool", ["relu3"], ["pool"], name="maxpool", kernel_shape=[2, 2], strides=[2, 2]))
    conv_bn(4, "pool", "bn4")
    nodes.append(helper.make_node("Relu", ["bn4"], ["relu4"], name="relu4"))
    nodes.append(helper.make_node("GlobalAveragePool", ["relu4"], ["gap"], name="gap"))
    nodes.append(helper.make_node("Flatten", ["gap"], ["features"], name="flatten", axis=1))
    nodes.append(
        helper.make_node(
            "Gemm",
            ["features", w("fc.weight", net.fc.weight), w("fc.bias", net.fc.bias)],
            ["logits"],
            name="fc",
            transB=1,
        )
    )
    graph = helper.make_graph(
        nodes,
        "digits_cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="calibkit-demo")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)


def write_split(folder: Path, pixels: np.ndarray, labels: np.ndarray) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for i, img in enumerate(pixels):
        Image.fromarray(img, mode="L").save(folder / f"{i:04d}.png", optimize=True)
    np.save(folder / "labels.npy", labels.astype(np.int64))


def main() -> None:
    torch.manual_seed(SEED)
    digits = load_digits()
    pixels, labels = to_pixels(digits.images), digits.target
    order = np.random.default_rng(SEED).permutation(len(labels))
    train, calib, val = order[:1000], order[1000:1300], order[1300:]
    x = torch.tensor(pixels[train, None] / 255.0, dtype=torch.float32)
    y = torch.tensor(labels[train])
    net = Net()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for epoch in range(40):
        perm = torch.randperm(len(x))
        for k in range(0, len(x), 64):
            idx = perm[k : k + 64]
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        xv = torch.tensor(pixels[val, None] / 255.0, dtype=torch.float32)
        acc = (net(xv).argmax(1).numpy() == labels[val]).mean()
    print(f"held-out accuracy: {acc:.4f}")
    export(net, ROOT / "calibkit" / "demo" / "digits_cnn.onnx")
    data = ROOT / "calibkit" / "demo" / "digits"
    calib_set = ROOT / "calibration_data" / "digits_cnn"
    write_split(calib_set, pixels[calib], labels[calib])
    write_split(data / "val", pixels[val], labels[val])
    pre = {"channels": "L", "layout": "NCHW", "scale": 1.0 / 255.0, "mean": [0.0], "std": [1.0]}
    for folder in (data, calib_set):  # the set's own copy: `calibkit calibrate MODEL` finds it
        (folder / "preprocess.json").write_text(json.dumps(pre, indent=2) + "\n")


if __name__ == "__main__":
    main()
