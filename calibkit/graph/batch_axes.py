"""Which axis of each input (and each activation) holds the samples.

Inputs: not every input is ``[N, ...]``. Recurrent state is ``[2, 'batch', 128]`` (samples on
axis 1), a sample rate is a 0-d scalar, an initial state ``[1, 1, 128]`` is shared by all
samples. The rules, in order (``--batch-axis NAME:AXIS|none`` overrides any of them):

1. a 0-d input has no sample axis;
2. the batch dim name is the dim_param found most often on axis 0 of the inputs; an input
   holding that name has its sample axis where the name is;
3. an input whose axis 0 is dynamic has its samples there;
4. when another input has dynamic samples: an input with exactly one dynamic dim has its
   samples on it (``[2, ?, 128]`` -> 1); a fully fixed input is shared (no sample axis);
5. otherwise axis 0 (a batch fixed by the model).

Activations: on CUDA runs are padded, and the padding is removed along each tensor's own
batch axis, found by shape inference with a unique symbolic batch dim (``activation_axes``).
"""

from __future__ import annotations

import dataclasses
from collections import Counter

import onnx

from calibkit.errors import CalibkitError

BATCH_PARAM = "__calibkit_batch__"


def parse_batch_axes(items: tuple[str, ...] | list[str] | None) -> dict[str, int | None]:
    """``("state:1", "sr:none,h:none")`` -> ``{"state": 1, "sr": None, "h": None}``."""
    out: dict[str, int | None] = {}
    for item in items or ():
        for part in filter(None, (p.strip() for p in item.split(","))):
            name, sep, axis = part.rpartition(":")
            if not sep or not name:
                raise CalibkitError(f"--batch-axis {part!r}: expected INPUT:AXIS or INPUT:none (e.g. state:1)")
            if axis.lower() == "none":
                out[name] = None
                continue
            try:
                out[name] = int(axis)
            except ValueError:
                raise CalibkitError(f"--batch-axis {part!r}: the axis must be an integer or 'none'") from None
    return out


def assign_sample_axes(specs: list, overrides: dict[str, int | None]):
    names = {s.name for s in specs}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise CalibkitError(
            f"--batch-axis names {unknown[0]!r}, which is not a model input; inputs: {', '.join(sorted(names))}"
        )
    heads = Counter(s.shape[0] for s in specs if s.shape and isinstance(s.shape[0], str))
    batch_name = heads.most_common(1)[0][0] if heads else None
    axes: dict[str, int | None] = {}
    for s in specs:
        if not s.shape:
            axes[s.name] = None
        elif batch_name is not None and batch_name in s.shape:
            axes[s.name] = s.shape.index(batch_name)
        elif not isinstance(s.shape[0], int):
            axes[s.name] = 0
    dynamic_elsewhere = any(axes.get(s.name) is not None and not isinstance(s.shape[axes[s.name]], int) for s in specs)
    for s in specs:
        if s.name in axes:
            continue
        dyn = [i for i, d in enumerate(s.shape) if not isinstance(d, int)]
        if dynamic_elsewhere and len(dyn) == 1:
            axes[s.name] = dyn[0]
        elif dynamic_elsewhere and not dyn:
            axes[s.name] = None
        else:
            axes[s.name] = 0
    out = []
    for s in specs:
        axis = overrides.get(s.name, axes[s.name])
        if axis is not None and not -len(s.shape) <= axis < len(s.shape):
            raise CalibkitError(f"--batch-axis {s.name}:{axis} is outside input {s.describe()} (rank {len(s.shape)})")
        if axis is not None and axis < 0:
            axis += len(s.shape)
        out.append(dataclasses.replace(s, sample_axis=axis))
    return out


def activation_axes(model: onnx.ModelProto, specs: list, names: list[str]) -> dict[str, int | None]:
    """Batch axis of each tensor in ``names`` from shape inference: the axis whose dim is the
    inputs' sample dim (renamed to a unique symbol first). Absent: inference could not tell."""
    sampled = {s.name: s.axis for s in specs if s.axis is not None}
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.value_info[:]
    for vi in m.graph.input:
        if vi.name in sampled:
            d = vi.type.tensor_type.shape.dim[sampled[vi.name]]
            d.Clear()
            d.dim_param = BATCH_PARAM
    for vi in m.graph.output:
        vi.type.tensor_type.ClearField("shape")
    try:
        inferred = onnx.shape_inference.infer_shapes(m, strict_mode=False)
    except Exception:
        return {}
    found: dict[str, int | None] = {}
    wanted = set(names)
    for vi in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]:
        if vi.name not in wanted or not vi.type.tensor_type.HasField("shape"):
            continue
        dims = vi.type.tensor_type.shape.dim
        hits = [i for i, d in enumerate(dims) if d.dim_param == BATCH_PARAM]
        if len(hits) == 1:
            found[vi.name] = hits[0]
        elif not hits and all(d.HasField("dim_value") for d in dims):
            found[vi.name] = None  # fully known shape without the batch: no batch axis
    return found


def axes_from_shapes(
    small: list[tuple[int, ...]], large: list[tuple[int, ...]], n_small: int, n_large: int
) -> list[int | None | str]:
    """Batch axis per tensor by comparing the shapes of runs of ``n_small`` and ``n_large``
    samples: the one axis whose size changed in proportion; None if none changed; "?" if unclear."""
    out: list[int | None | str] = []
    for a, b in zip(small, large):
        if len(a) != len(b):
            out.append("?")
            continue
        diff = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
        if not diff:
            out.append(None)
        elif len(diff) == 1 and a[diff[0]] * n_large == b[diff[0]] * n_small:
            out.append(diff[0])
        else:
            out.append("?")
    return out
