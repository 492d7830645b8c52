"""Loading an ONNX model, describing its inputs and the float tensors that need scales."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from calibkit.errors import CalibkitError

FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}
# Ops whose outputs are shape/index computations even when typed float.
_SHAPE_OPS = {"Shape", "Size", "ConstantOfShape", "Range", "NonZero", "TopK", "ArgMax", "ArgMin"}


def dim_of(d) -> int | str | None:
    """A TensorShapeProto dim: an int only when fixed and positive; ``-1``, ``0``, a dim with
    neither value nor name, and symbolic dims are dynamic (the name, or None)."""
    if d.HasField("dim_value") and d.dim_value > 0:
        return int(d.dim_value)
    return d.dim_param or None


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...]  # int for fixed dims (> 0), str/None for dynamic
    sample_axis: int | None = 0  # the axis samples are stacked on; None: passed whole to every run

    @property
    def axis(self) -> int | None:
        """The sample axis, or None for inputs passed whole (scalars, shared tensors)."""
        if not self.shape or self.sample_axis is None:
            return None
        return self.sample_axis

    @property
    def fixed_batch(self) -> int | None:
        ax = self.axis
        if ax is None:
            return None
        d = self.shape[ax]
        return d if isinstance(d, int) and d > 0 else None

    def describe(self) -> str:
        dims = ",".join("?" if not isinstance(d, int) else str(d) for d in self.shape)
        return f"{self.name} {self.dtype}[{dims}]"


BIG_EXTERNAL = 1 << 30  # external weights above this stay on disk even for load()'s default


def external_files(model: onnx.ModelProto, base: Path) -> list[Path]:
    """The external-data files ``model``'s initializers reference (relative to ``base``)."""
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    locs = set()
    for t in _get_all_tensors(model):
        if uses_external_data(t):
            for kv in t.external_data:
                if kv.key == "location":
                    locs.add(kv.value)
    return [base / loc for loc in sorted(locs)]


def not_a_file(p: Path) -> str:
    """Why ``p`` (not a regular file) cannot be read, in words."""
    if p.is_symlink() and not p.exists():
        try:
            p.resolve(strict=True)
        except RuntimeError:
            return "is a symbolic link that loops"
        except OSError:
            pass
        return f"is a symbolic link to {os.readlink(p)!r}, which does not exist"
    if p.is_dir():
        return "is a directory"
    if p.exists():
        return "is not a regular file (a FIFO, socket or device)"
    return "not found"


def read_graph(p: Path) -> onnx.ModelProto:
    """The model at ``p`` with external weights left on disk; one-line errors (an empty graph,
    e.g. a 0-byte file, is one: every reader would find nothing to do and say something else)."""
    if not p.is_file():
        raise CalibkitError(f"model {p} {not_a_file(p)}; pass the path of an .onnx file")
    try:
        model = onnx.load(str(p), load_external_data=False, format="protobuf")
    except Exception as exc:  # protobuf raises several types
        raise CalibkitError(f"model {p} is not a readable ONNX file ({type(exc).__name__}); re-export it") from None
    if not model.graph.node:
        raise CalibkitError(f"model {p} has an empty graph; re-export it")
    return model


def load(path: str | Path, keep_external: bool | None = None) -> onnx.ModelProto:
    """Read and check an ONNX model; every failure is a CalibkitError naming the file.

    External data (weights in side files) is left on disk when ``keep_external`` (the proto
    holds references relative to the model's folder: pass ``external_dir=model_dir(path)`` to
    ``providers.session``); by default only when it is larger than 1 GiB, so a model whose
    weights exceed protobuf's 2 GiB is never serialised whole. The checker reads the file
    (its path form handles external data and large models)."""
    p = Path(path)
    model = read_graph(p)  # an empty graph is refused there
    files = external_files(model, p.parent)
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise CalibkitError(f"model {p} keeps its weights in {missing[0]}, which is missing; copy it next to the model")
    try:
        onnx.checker.check_model(str(p))
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CalibkitError(f"model {p} fails onnx.checker: {first}") from None
    if keep_external is None:
        keep_external = sum(f.stat().st_size for f in files) > BIG_EXTERNAL
    if files and not keep_external:
        onnx.load_external_data_for_model(model, str(p.parent))
    return model


def has_external(model: onnx.ModelProto) -> bool:
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    return any(uses_external_data(t) for t in _get_all_tensors(model))


def fingerprint_file(path: str | Path) -> str:
    """sha256 of the model file, and of its external-data files (in location order) if any."""
    p = Path(path)
    files = [p]
    try:
        files += external_files(onnx.load(str(p), load_external_data=False), p.parent)
    except Exception:
        pass
    h = hashlib.sha256()
    for i, f in enumerate(files):
        if i:
            h.update(b"\0external:" + f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return "sha256:" + h.hexdigest()


def check_fingerprint(theirs: str | None, ours: str, what: str, force: bool) -> None:
    """Refuse an artifact (histograms, scales) made for another model, unless ``force``."""
    if theirs and theirs != ours and not force:
        raise CalibkitError(
            f"{what} come from another model ({theirs}); recalibrate this model, or pass --force if the graph is really the same"
        )


def _initializer_names(model: onnx.ModelProto) -> set[str]:
    return {i.name for i in model.graph.initializer}


def input_specs(model: onnx.ModelProto, batch_axes: dict[str, int | None] | None = None) -> list[InputSpec]:
    """The model's non-initializer inputs, each with its sample axis (``batch_axes`` overrides:
    input name -> axis, or None for an input passed whole)."""
    inits = _initializer_names(model)
    specs = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dtype = helper.tensor_dtype_to_np_dtype(tt.elem_type)
        dims = tuple(dim_of(d) for d in tt.shape.dim)
        specs.append(InputSpec(vi.name, np.dtype(dtype), dims))
    from calibkit.graph.batch_axes import assign_sample_axes

    return assign_sample_axes(specs, batch_axes or {})


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


def calibration_tensors(model: onnx.ModelProto, everything: bool = False) -> list[str]:
    """Float tensors TensorRT may need a scale for, in graph order.

    Graph inputs and node outputs of float type; not initializers, not outputs computed
    from constants alone (TensorRT folds them), not shape/index computations. ``everything``:
    those too (every float tensor ORT can expose but Constant outputs; collection gives them
    a histogram so no float tensor is without a scale).
    """
    types = _value_types(model)
    constant = _initializer_names(model)
    names: list[str] = [s.name for s in input_specs(model) if types.get(s.name, TensorProto.FLOAT) in FLOAT_TYPES]
    for node in model.graph.node:
        if node.op_type == "Constant" or all(i in constant for i in node.input if i):
            constant.update(o for o in node.output if o)
            if node.op_type == "Constant" or not everything:
                continue
        if node.op_type in _SHAPE_OPS and not everything:
            continue
        for out in node.output:
            if out and types.get(out, TensorProto.FLOAT) in FLOAT_TYPES:
                names.append(out)
    seen: set[str] = set()
    return [n for n in names if not (n in seen or seen.add(n))]


def with_outputs(model: onnx.ModelProto, names: list[str], drop_shapes: bool = False) -> onnx.ModelProto:
    """A copy of ``model`` that also returns ``names`` as graph outputs.

    ``drop_shapes``: forget the declared shapes of every output and exposed tensor (keeping
    their types), so ORT neither checks results nor bound buffers against wrong declarations;
    input dims of -1 or 0 become symbolic (ORT would take 0 literally)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    present = {o.name for o in m.graph.output}
    inputs = {i.name for i in m.graph.input}
    for n in names:
        if n not in present and n not in inputs:
            m.graph.output.append(onnx.ValueInfoProto(name=n))
    if drop_shapes:
        for vi in m.graph.input:  # -1 / 0 dims are dynamic to calibkit: make them so for ORT too
            for k, d in enumerate(vi.type.tensor_type.shape.dim):
                if d.HasField("dim_value") and d.dim_value <= 0:
                    d.Clear()
                    d.dim_param = f"{vi.name}_dim{k}"
        exposed = set(names)
        for vi in [*m.graph.output, *(v for v in m.graph.value_info if v.name in exposed)]:
            if vi.type.HasField("tensor_type"):
                vi.type.tensor_type.ClearField("shape")
    return m
