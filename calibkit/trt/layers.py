"""Which ONNX nodes a TensorRT layer comes from: the ONNX parser writes ``[ONNX Layer: <node>]``
into ``ILayer.metadata`` (10.16 and 11.4), and the engine inspector repeats it, several of them
(separated by ``\\x1f``) for a fused layer. No TensorRT needed."""

from __future__ import annotations

import re

_NODE = re.compile(r"\[ONNX Layer: (.*?)\](?=$|[\x1e\x1f\[])", re.S)


def onnx_nodes(metadata: str | None) -> list[str]:
    """``"[ONNX Layer: conv1]\\x1f[ONNX Layer: relu1]"`` -> ``["conv1", "relu1"]`` (order kept, no repeats)."""
    out: list[str] = []
    for name in _NODE.findall(metadata or ""):
        if name not in out:
            out.append(name)
    return out


def layer_nodes(name: str, metadata: str | None) -> list[str]:
    """The ONNX nodes of a layer: from its metadata, else its name (parsers without metadata)."""
    return onnx_nodes(metadata) or [name]
