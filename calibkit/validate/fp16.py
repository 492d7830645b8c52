"""FP16 candidates: ONNX Runtime's float16 converter, or an honest emulation.

``convert`` keeps FP32 inputs/outputs (``keep_io_types``). Where ONNX Runtime cannot run the
converted graph on the chosen provider, ``emulate`` gives a float32 graph in which every
weight and every float activation is rounded through float16 (Cast->FLOAT16->Cast->FLOAT);
it rounds like FP16 storage but accumulates in FP32, and is labelled as emulated.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def convert(model: onnx.ModelProto) -> onnx.ModelProto:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False)


def emulate(model: onnx.ModelProto) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    for init in g.initializer:
        if init.data_type == TensorProto.FLOAT:
            a = numpy_helper.to_array(init).astype(np.float16).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(a, init.name))
    outputs = {o.name for o in g.output}
    nodes = []
    renames: dict[str, str] = {}
    for node in g.node:
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = renames[name]
        nodes.append(node)
        if node.op_type in ("Shape", "Size", "Constant"):
            continue
        for out in node.output:
            if not out:
                continue
            rounded = out if out in outputs else f"{out}__fp16"
            src = f"{out}__fp32" if out in outputs else out
            if out in outputs:
                node.output[list(node.output).index(out)] = src
            nodes.append(helper.make_node("Cast", [src], [f"{out}__h"], to=TensorProto.FLOAT16, name=f"{out}__to_fp16"))
            nodes.append(
                helper.make_node("Cast", [f"{out}__h"], [rounded], to=TensorProto.FLOAT, name=f"{out}__to_fp32")
            )
            if out not in outputs:
                renames[out] = rounded
    del g.node[:]
    g.node.extend(nodes)
    del g.value_info[:]  # types of renamed tensors are re-inferred
    return m
