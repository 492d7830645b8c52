"""ONNX Runtime ``TensorsData`` JSON, as read by
``onnxruntime.quantization.calibrate.load_tensors_data`` and by ``quantize_static``'s
``calibration_cache_path``: symmetric ranges ``[-amax, amax]`` under the MinMax method
(the scales are final; ORT then derives scale = amax / 127 for symmetric INT8).
"""

from __future__ import annotations

import json
from pathlib import Path

from calibkit.outputs.atomic import write_text


def tensors_data_dict(amax: dict[str, float]) -> dict:
    def arr(v: float) -> dict:
        return {"data": float(v), "dtype": "float32", "CLS": "numpy.array"}

    return {
        "CLS": "TensorsData",
        "calibration_method": {"CLS": "CalibrationMethod", "value": "CalibrationMethod.MinMax"},
        "data": {n: {"lowest": arr(-a), "highest": arr(a), "CLS": "TensorData"} for n, a in amax.items()},
        "smooth_quant": False,
    }


def dumps(amax: dict[str, float]) -> str:
    return json.dumps(tensors_data_dict(amax), indent=1, sort_keys=True, allow_nan=False) + "\n"


def write(path: str | Path, amax: dict[str, float], tx=None) -> Path:
    return write_text(path, dumps(amax), tx)
