"""Files around Q/DQ export: reading the source model without its weights, staging it for
ONNX Runtime's quantizer (external data beside it), checking the result (onnx.checker and an
ONNX Runtime load) and publishing ``model.qdq.onnx`` (+ ``model.qdq.onnx.<hash>.data``) together.

Nothing is ever written beside the source model, and no step serialises the whole model into
one protobuf, so models over 2 GiB (external data) work.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import onnx
from onnx import TensorProto

from calibkit.errors import CalibkitError

LARGE_BYTES = 1 << 30  # above this much tensor data, the Q/DQ model is written with external data


def _tensors(graph: onnx.GraphProto):
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for sub in attr.graphs:
                yield from _tensors(sub)


def external_locations(model: onnx.ModelProto) -> list[str]:
    """Relative paths of the external data files the model's tensors point to."""
    locs: list[str] = []
    for t in _tensors(model.graph):
        if t.data_location == TensorProto.EXTERNAL:
            loc = next((e.value for e in t.external_data if e.key == "location"), None)
            if loc and loc not in locs:
                locs.append(loc)
    return locs


def tensor_bytes(model: onnx.ModelProto) -> int:
    """Bytes of tensor data, in the proto or in external files (by the recorded lengths)."""
    total = 0
    for t in _tensors(model.graph):
        if t.data_location == TensorProto.EXTERNAL:
            total += int(next((e.value for e in t.external_data if e.key == "length"), 0) or 0)
        else:
            total += (
                len(t.raw_data)
                + 4 * (len(t.float_data) + len(t.int32_data))
                + 8 * (len(t.int64_data) + len(t.double_data))
            )
    return total


def read_light(path: str | Path) -> onnx.ModelProto:
    """The model at ``path`` without loading external data; one-line errors."""
    from calibkit.graph.model import read_graph

    p = Path(path)
    model = read_graph(p)
    for loc in external_locations(model):
        if not (p.parent / loc).is_file():
            raise CalibkitError(
                f"model {p} keeps weights in {loc}, which is not beside it; copy the data file next to the model"
            )
    return model


def stage_input(model: onnx.ModelProto, source_dir: Path | None, where: Path) -> Path:
    """Write ``model`` as ``where/model.onnx`` for the quantizer, its external data beside it
    (copies of the source's files). Returns the path."""
    where.mkdir(parents=True, exist_ok=True)
    for loc in external_locations(model):
        rel = Path(loc)
        if rel.is_absolute() or ".." in rel.parts or source_dir is None:
            raise CalibkitError(
                f"external data location {loc!r} is not a file beside the model; re-save the model with relative external data"
            )
        dst = where / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source_dir / rel, dst)  # onnx refuses hard-linked and symlinked data files
    path = where / "model.onnx"
    if tensor_bytes(model) > LARGE_BYTES and not external_locations(model):
        onnx.save_model(
            model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="model.onnx.data"
        )
    else:
        onnx.save_model(model, str(path))
    return path


def check_written(path: Path, basic: bool = False) -> None:
    """onnx.checker (from the path: external data and > 2 GiB supported) and an ONNX Runtime load.

    ``basic``: load with ONNX Runtime's basic optimizations only (how calibkit runs Q/DQ
    models): FP8 models, whose Q/DQ ORT's extended QDQ propagation moves onto ops that have no
    FLOAT8E4M3FN kernel on the CPU provider (Reshape, measured with ORT 1.23)."""
    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as exc:
        raise CalibkitError(f"the exported Q/DQ model fails onnx.checker: {str(exc).strip().splitlines()[0]}") from None
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if basic:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    try:
        ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise CalibkitError(
            f"the exported Q/DQ model does not load in ONNX Runtime ({first}); nothing written, please report this model"
        ) from None


def data_name(target: Path, data: Path) -> str:
    """The name the external data of ``target`` is published under: one per content
    (``q.onnx.<sha256 prefix>.data``), so a reader that is not calibkit (ONNX Runtime, TensorRT)
    sees the old graph with the old data or the new graph with the new data, never a mix."""
    import hashlib

    h = hashlib.sha256()
    with open(data, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return f"{target.name}.{h.hexdigest()[:16]}.data"


def _point_to(model_path: Path, location: str) -> None:
    """Rewrite every external tensor of the graph at ``model_path`` to ``location`` (graph only)."""
    m = onnx.load(str(model_path), load_external_data=False)
    for t in _tensors(m.graph):
        if t.data_location == TensorProto.EXTERNAL:
            for e in t.external_data:
                if e.key == "location":
                    e.value = location
    onnx.save_model(m, str(model_path))


def _old_data(target: Path, keep: str | None) -> list[Path]:
    """External data files of the model now at ``target`` that the new one no longer uses
    (only names calibkit gives: ``<target>.data`` or ``<target>.<hex>.data``)."""
    if not target.is_file():
        return []
    try:
        old = onnx.load(str(target), load_external_data=False)
    except Exception:
        return []
    pattern = re.compile(re.escape(target.name) + r"(?:\.[0-9a-f]{16})?\.data")
    return [target.parent / loc for loc in external_locations(old) if loc != keep and pattern.fullmatch(loc)]


def publish(staged: Path, target: Path, tx=None) -> Path:
    """Publish ``staged`` as ``target`` and its external data file (if any) beside it, as one
    set: the data under a name of its own content (:func:`data_name`), renamed into place before
    the graph that points to it; the data file the replaced graph used is removed afterwards."""
    from calibkit.outputs.publish import Transaction

    files = []
    data = staged.with_name(staged.name + ".data")
    name = None
    if data.exists():
        name = data_name(target, data)
        data = data.rename(data.with_name(name))
        _point_to(staged, name)
        files.append((name, data))
    files.append((target.name, staged))
    stale = _old_data(target, name)

    def put(t) -> None:
        for fname, src in files:
            t.write_with(target.parent / fname if t is tx else fname, lambda fh, s=src: copy_into(s, fh))
        t.after_commit.append(lambda: [p.unlink(missing_ok=True) for p in stale])

    if tx is not None:
        put(tx)
        return target
    with Transaction(target.parent, target.name, command=f"writing {target.name}") as own:
        put(own)
        own.commit()
    return target


def copy_into(src: Path, fh) -> None:
    with open(src, "rb") as s:
        shutil.copyfileobj(s, fh, 1 << 20)
