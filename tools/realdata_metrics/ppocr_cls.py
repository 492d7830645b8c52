"""Metric of a tools/realdata.py ppocr_cls folder (standalone: numpy + stdlib).

score(outputs, labels): 1.0 where the argmax of the [N, 2] orientation output equals the label
(0 = upright, 1 = turned 180 degrees), else 0.0. agree(a, b): 1.0 where the argmaxes are equal.
A row holding NaN/inf counts as a miss (and as a disagreement).
"""

import numpy as np


def _argmax(outputs):
    arr = np.asarray(next(iter(outputs.values())) if len(outputs) == 1 else outputs["save_infer_model/scale_0.tmp_1"])
    arr = arr.reshape(len(arr), -1)
    return np.where(np.isfinite(arr).all(1), arr.argmax(1), -1)


def score(outputs, labels):
    return (_argmax(outputs) == np.asarray(labels).reshape(-1)).astype(np.float64)


def agree(a, b):
    x, y = _argmax(a), _argmax(b)
    return ((x == y) & (x >= 0)).astype(np.float64)
