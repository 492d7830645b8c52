"""Loading an ONNX model, describing its inputs and the float tensors that need scales."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from calibkit.errors import CalibkitError

FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}
# Ops whose outputs are shape/index computations even when typed float.
_SHAPE_OPS = {"Shape", "Size", "ConstantOfShape", "Range", "NonZero", "TopK", "ArgMax", "ArgMin"}


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...]  # int for fixed dims, str/None for dynamic

    @property
    def fixed_batch(self) -> int | None:
        return self.shape[0] if self.shape and isinstance(self.shape[0], int) else None

    def describe(self) -> str:
        dims = ",".join("?" if not isinstance(d, int) else str(d) for d in self.shape)
        return f"{self.name} {self.dtype}[{dims}]"


def load(path: str | Path) -> onnx.ModelProto:
    """Read and check an ONNX model; every failure is a CalibkitError naming the file."""
    p = Path(path)
    if not p.is_file():
        raise CalibkitError(f"model {p} not found; pass the path of an .onnx file")
    try:
        model = onnx.load(str(p))
    except Exception as exc:  # protobuf raises several types
        raise CalibkitError(f"model {p} is not a readable ONNX file ({type(exc).__name__}); re-export it") from None
    if not model.graph.node:
        raise CalibkitError(f"model {p} has an empty graph; re-export it")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CalibkitError(f"model {p} fails onnx.checker: {first}") from None
    return model


def fingerprint_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def check_fingerprint(theirs: str | None, ours: str, what: str, force: bool) -> None:
    """Refuse an artifact (histograms, scales) made for another model, unless ``force``."""
    if theirs and theirs != ours and not force:
        raise CalibkitError(f"{what} come from another model ({theirs}); recalibrate this model, or pass --force if the graph is really the same")


def _initializer_names(model: onnx.ModelProto) -> set[str]:
    return {i.name for i in model.graph.initializer}


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    inits = _initializer_names(model)
    specs = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dtype = helper.tensor_dtype_to_np_dtype(tt.elem_type)
        dims: list[int | str | None] = []
        for d in tt.shape.dim:
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            else:
                dims.append(d.dim_param or None)
        specs.append(InputSpec(vi.name, np.dtype(dtype), tuple(dims)))
    return specs


def _value_types(model: onnx.ModelProto) -> dict[str, int]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # inference is best effort; runtime dtypes settle the rest
        inferred = model
    types = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    return types


def calibration_tensors(model: onnx.ModelProto) -> list[str]:
    """Float tensors TensorRT may need a scale for, in graph order.

    Graph inputs and node outputs of float type; not initializers, not outputs computed
    from constants alone (TensorRT folds them), not shape/index computations.
    """
    types = _value_types(model)
    constant = _initializer_names(model)
    names: list[str] = [s.name for s in input_specs(model) if types.get(s.name, TensorProto.FLOAT) in FLOAT_TYPES]
    for node in model.graph.node:
        if node.op_type == "Constant" or all(i in constant for i in node.input if i):
            constant.update(o for o in node.output if o)
            continue
        if node.op_type in _SHAPE_OPS:
            continue
        for out in node.output:
            if out and types.get(out, TensorProto.FLOAT) in FLOAT_TYPES:
                names.append(out)
    seen: set[str] = set()
    return [n for n in names if not (n in seen or seen.add(n))]


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` that also returns ``names`` as graph outputs."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    present = {o.name for o in m.graph.output}
    inputs = {i.name for i in m.graph.input}
    for n in names:
        if n not in present and n not in inputs:
            m.graph.output.append(onnx.ValueInfoProto(name=n))
    return m
