"""The weighted layers recovery works on, seen as matrices: ``y = W x + b`` per group.

A Conv is ``W [Cout, Cin/g*kh*kw]`` applied to image patches (im2col), a ConvTranspose (one
group) is ``W [Cout, Cin*kh*kw]`` applied to the input values each output position reads (the
transposed gather: zeros where the stride skips), a Gemm or a MatMul with a constant weight is
``W [N, K]`` applied to rows. Rows of ``W`` are output channels, which is
also the per-channel axis the INT8 weight scales run along (qdq/placement.weight_axis), so one
per-row scale describes the weights ONNX Runtime's quantizer and TensorRT will write.

Only what the data of one layer needs: no sessions here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper


@dataclass(frozen=True)
class Layer:
    node: str  # node name (unique: qdq.export.name_nodes)
    op: str  # Conv, ConvTranspose, Gemm or MatMul
    input: str  # the activation it reads
    output: str
    weight: str  # initializer name
    bias: str | None  # initializer holding the bias (Conv input 2, Gemm C, or the Add after a MatMul)
    bias_node: str | None  # the node whose input is ``bias`` (the layer itself, or that Add)
    groups: int = 1
    kernel: tuple[int, ...] = ()
    strides: tuple[int, ...] = ()
    pads: tuple[int, ...] = ()  # begin..., end...
    dilations: tuple[int, ...] = ()
    trans_b: bool = False
    output_padding: tuple[int, ...] = ()  # ConvTranspose

    @property
    def spatial(self) -> int:
        return len(self.kernel)


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _conv(node: onnx.NodeProto, w: np.ndarray, bias: str | None) -> Layer | None:
    k = tuple(int(d) for d in w.shape[2:])
    if len(k) not in (1, 2) or _attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
        return None
    n = len(k)
    pads = tuple(int(p) for p in _attr(node, "pads", [0] * 2 * n))
    return Layer(
        node.name,
        "Conv",
        node.input[0],
        node.output[0],
        node.input[1],
        bias,
        node.name if bias else None,
        int(_attr(node, "group", 1)),
        k,
        tuple(int(s) for s in _attr(node, "strides", [1] * n)),
        pads,
        tuple(int(d) for d in _attr(node, "dilations", [1] * n)),
    )


def _conv_transpose(node: onnx.NodeProto, w: np.ndarray, bias: str | None) -> Layer | None:
    k = tuple(int(d) for d in w.shape[2:])
    pad_mode = _attr(node, "auto_pad", b"NOTSET")
    if len(k) not in (1, 2) or int(_attr(node, "group", 1)) != 1 or _attr(node, "output_shape", None) is not None:
        return None  # per-channel scales run along axis 1 (Cout/g): one group only
    if pad_mode not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
        return None
    n = len(k)
    return Layer(
        node.name,
        "ConvTranspose",
        node.input[0],
        node.output[0],
        node.input[1],
        bias,
        node.name if bias else None,
        1,
        k,
        tuple(int(s) for s in _attr(node, "strides", [1] * n)),
        tuple(int(p) for p in _attr(node, "pads", [0] * 2 * n)),
        tuple(int(d) for d in _attr(node, "dilations", [1] * n)),
        output_padding=tuple(int(p) for p in _attr(node, "output_padding", [0] * n)),
    )


def find(model: onnx.ModelProto, amax: dict[str, float] | None = None) -> tuple[list[Layer], dict[str, str]]:
    """The recoverable layers of the main graph in topological (node) order, and
    {node: why not} for the other compute nodes. ``amax``: only layers whose input has a scale."""
    inits = {i.name: i for i in model.graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    graph_outputs = {o.name for o in model.graph.output}
    layers, skipped = [], {}
    for node in model.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            continue
        why = None
        if len(node.input) < 2 or node.input[1] not in inits:
            why = "its weight is not a constant (activation x activation)"
        elif amax is not None and node.input[0] not in amax:
            why = "its input has no scale"
        if why:
            skipped[node.name] = why
            continue
        w = numpy_helper.to_array(inits[node.input[1]])
        layer = None
        if node.op_type in ("Conv", "ConvTranspose"):
            bias = node.input[2] if len(node.input) > 2 and node.input[2] in inits else None
            layer = (_conv if node.op_type == "Conv" else _conv_transpose)(node, w, bias)
        elif node.op_type == "Gemm":
            ok = w.ndim == 2 and not _attr(node, "transA", 0) and float(_attr(node, "alpha", 1.0)) == 1.0
            c = node.input[2] if len(node.input) > 2 and node.input[2] else None
            if ok and (c is None or (c in inits and float(_attr(node, "beta", 1.0)) == 1.0)):
                layer = Layer(
                    node.name,
                    "Gemm",
                    node.input[0],
                    node.output[0],
                    node.input[1],
                    c,
                    node.name if c else None,
                    trans_b=bool(_attr(node, "transB", 0)),
                )
        elif node.op_type == "MatMul" and w.ndim == 2:
            bias, bias_node = _matmul_bias(node, consumers, inits, graph_outputs, w.shape[1])
            layer = Layer(node.name, "MatMul", node.input[0], node.output[0], node.input[1], bias, bias_node)
        if layer is None:
            skipped[node.name] = f"{node.op_type} form not covered (attributes, rank or auto_pad)"
        else:
            layers.append(layer)
    return layers, skipped


def _matmul_bias(node, consumers, inits, graph_outputs, n_out: int) -> tuple[str | None, str | None]:
    """The Add that adds a constant [N] vector to the MatMul's output, its only consumer."""
    out = node.output[0]
    users = consumers.get(out, [])
    if out in graph_outputs or len(users) != 1 or users[0].op_type != "Add":
        return None, None
    add = users[0]
    other = add.input[1] if add.input[0] == out else add.input[0]
    if other in inits and tuple(inits[other].dims) == (n_out,):
        return other, add.name
    return None, None


def weight_matrix(layer: Layer, w: np.ndarray) -> np.ndarray:
    """``W`` as [groups, rows per group, K] (rows = output channels in order)."""
    if layer.op == "Conv":
        return w.reshape(layer.groups, w.shape[0] // layer.groups, -1)
    if layer.op == "ConvTranspose":  # [Cin, Cout, k...] -> rows = output channels
        return np.ascontiguousarray(np.moveaxis(w, 1, 0).reshape(w.shape[1], -1))[None]
    if layer.op == "Gemm":
        return (w if layer.trans_b else w.T)[None]
    return w.T[None]  # MatMul [K, N]


def weight_from_matrix(layer: Layer, m: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The inverse of :func:`weight_matrix`."""
    if layer.op == "Conv":
        return m.reshape(shape)
    if layer.op == "ConvTranspose":
        return np.ascontiguousarray(np.moveaxis(m[0].reshape(shape[1], shape[0], *shape[2:]), 0, 1))
    m = m[0]
    return m if layer.op == "Gemm" and layer.trans_b else np.ascontiguousarray(m.T)


def positions(layer: Layer, shape: tuple[int, ...], limit: int, seed: int) -> np.ndarray:
    """Which rows (patch positions or matrix rows) of an input of ``shape`` to sample: a fixed,
    sorted subset of at most ``limit``, the same for the float and the quantized run."""
    total = rows(layer, shape)
    if total <= limit:
        return np.arange(total)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(total, size=limit, replace=False))


def _out_size(layer: Layer, spatial: tuple[int, ...]) -> tuple[int, ...]:
    n = layer.spatial
    return tuple(
        (spatial[i] + layer.pads[i] + layer.pads[i + n] - layer.dilations[i] * (layer.kernel[i] - 1) - 1)
        // layer.strides[i]
        + 1
        for i in range(n)
    )


def _out_size_transposed(layer: Layer, spatial: tuple[int, ...]) -> tuple[int, ...]:
    n = layer.spatial
    return tuple(
        (spatial[i] - 1) * layer.strides[i]
        - layer.pads[i]
        - layer.pads[i + n]
        + layer.dilations[i] * (layer.kernel[i] - 1)
        + layer.output_padding[i]
        + 1
        for i in range(n)
    )


def rows(layer: Layer, shape: tuple[int, ...]) -> int:
    if layer.op == "Conv":
        return int(shape[0] * np.prod(_out_size(layer, tuple(shape[2:]))))
    if layer.op == "ConvTranspose":
        return int(shape[0] * np.prod(_out_size_transposed(layer, tuple(shape[2:]))))
    return int(np.prod(shape[:-1])) if layer.op == "MatMul" else int(shape[0])


def patches(layer: Layer, x: np.ndarray, pick: np.ndarray) -> np.ndarray:
    """The sampled rows of the layer's input as [groups, len(pick), K] float32 (im2col for a Conv)."""
    if layer.op == "ConvTranspose":
        return _transposed_patches(layer, x, pick)
    if layer.op != "Conv":
        flat = x.reshape(-1, x.shape[-1])
        return np.ascontiguousarray(flat[pick], dtype=np.float32)[None]
    n = layer.spatial
    if n == 1:
        x = x[:, :, None, :]
    kernel = (1,) * (2 - n) + layer.kernel
    strides = (1,) * (2 - n) + layer.strides
    dil = (1,) * (2 - n) + layer.dilations
    pb = (0,) * (2 - n) + layer.pads[:n]
    pe = (0,) * (2 - n) + layer.pads[n:]
    xp = np.pad(x, ((0, 0), (0, 0), (pb[0], pe[0]), (pb[1], pe[1])))
    out = _out_size(layer, tuple(x.shape[2 + (2 - n) :]) if n == 1 else tuple(x.shape[2:]))
    oh, ow = (1, out[0]) if n == 1 else out
    b, idx = np.divmod(pick, oh * ow)
    r, c = np.divmod(idx, ow)
    ky = np.arange(kernel[0]) * dil[0]
    kx = np.arange(kernel[1]) * dil[1]
    ys = (r * strides[0])[:, None] + ky[None, :]  # [M, kh]
    xs = (c * strides[1])[:, None] + kx[None, :]  # [M, kw]
    # [M, C, kh, kw] gathered without materialising every window
    p = xp[
        b[:, None, None, None], np.arange(xp.shape[1])[None, :, None, None], ys[:, None, :, None], xs[:, None, None, :]
    ]
    g = layer.groups
    return np.ascontiguousarray(p.reshape(len(pick), g, -1).transpose(1, 0, 2), dtype=np.float32)


def _transposed_patches(layer: Layer, x: np.ndarray, pick: np.ndarray) -> np.ndarray:
    """[1, M, Cin*kh*kw]: for each sampled output position, the input value each kernel tap
    multiplies (ConvTranspose scatters x[i, q] * w[i, o, k] to p = q * stride - pad + k * dil,
    so p reads q = (p + pad - k * dil) / stride where that is a whole in-range index), else 0."""
    n = layer.spatial
    if n == 1:
        x = x[:, :, None, :]
    kernel = (1,) * (2 - n) + layer.kernel
    strides = (1,) * (2 - n) + layer.strides
    dil = (1,) * (2 - n) + layer.dilations
    pb = (0,) * (2 - n) + layer.pads[:n]
    size = _out_size_transposed(layer, tuple(x.shape[2 + (2 - n) :]) if n == 1 else tuple(x.shape[2:]))
    oh, ow = (1, size[0]) if n == 1 else size
    b, idx = np.divmod(pick, oh * ow)
    r, c = np.divmod(idx, ow)

    def taps(pos, axis):
        num = pos[:, None] + pb[axis] - np.arange(kernel[axis])[None, :] * dil[axis]  # [M, k]
        q, rem = np.divmod(num, strides[axis])
        ok = (rem == 0) & (q >= 0) & (q < x.shape[2 + axis])
        return np.where(ok, q, 0), ok

    ys, vy = taps(r, 0)
    xs, vx = taps(c, 1)
    p = x[
        b[:, None, None, None], np.arange(x.shape[1])[None, :, None, None], ys[:, None, :, None], xs[:, None, None, :]
    ]
    p = p * (vy[:, None, :, None] & vx[:, None, None, :])
    return np.ascontiguousarray(p.reshape(len(pick), -1), dtype=np.float32)[None]
