"""TensorRT 10 INT8 from calibkit's amaxes without a calibrator: ``ITensor.set_dynamic_range``
on every float tensor of the network calibkit has a scale for (no cache header to match)."""

from __future__ import annotations

from pathlib import Path

from calibkit.artifacts import trt_cache as cache_io
from calibkit.errors import CalibkitError
from calibkit.numerics.formats import INT8

TRT_MAJORS = (10,)
FLOATS = ("FLOAT", "HALF", "BF16")


def amax_from_cache(path: Path) -> dict[str, float]:
    """amax = scale * 127 for every tensor of a calibration cache."""
    return {name: scale * INT8.qmax for name, scale in cache_io.read(path).scales.items()}


def read_amax(path: Path) -> dict[str, float]:
    """amax per tensor from a calibkit scales.json or a TensorRT cache (amax = scale * 127)."""
    from calibkit.artifacts import scales as scales_io

    if not path.is_file():
        raise CalibkitError(f"--ranges {path} not found; pass calibkit's scales.json or <model>.cache")
    if path.read_bytes()[:64].lstrip().startswith(b"{"):
        return {n: float(a) for n, a in scales_io.read(path).amax().items() if a is not None and a > 0}
    return amax_from_cache(path)


def apply(network, amax: dict[str, float]) -> tuple[int, list[str]]:
    """Set [-amax, amax] on each float tensor named in ``amax``; (tensors set, names of ``amax``
    that are no tensor of the network)."""
    tensors = [network.get_input(i) for i in range(network.num_inputs)]
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        tensors += [layer.get_output(j) for j in range(layer.num_outputs)]
    done: set[str] = set()
    for tensor in tensors:
        a = amax.get(tensor.name)
        if a is None or tensor.name in done or tensor.dtype.name not in FLOATS:
            continue
        if not tensor.set_dynamic_range(-a, a):
            raise CalibkitError(f"TensorRT refused the range [-{a}, {a}] of tensor {tensor.name!r}")
        done.add(tensor.name)
    if not done:
        raise CalibkitError("--ranges: no tensor of the TensorRT network has a range in the file; calibrate this model")
    return len(done), sorted(set(amax) - {t.name for t in tensors})
