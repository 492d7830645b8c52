"""Metric of a tools/realdata.py ddddocr_common folder (standalone: numpy + stdlib).

The model's output is time-major [T, N, C] (T = 20 for width 160); outputs of one-sample runs
concatenated on axis 0 ([N*T, 1, C]) are accepted too. score(outputs, labels): 1.0 where the
greedy CTC decode (argmax, merge repeats, drop index 0, as ddddocr) equals the rendered string,
case-sensitive; labels index labels.json "texts". agree(a, b): 1.0 where both decode alike.
A sample whose scores hold NaN/inf counts as a miss.
"""

import json
import os

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
_META = {}


def _meta():
    if not _META:
        with open(os.path.join(_HERE, "labels.json"), encoding="utf-8") as fh:
            _META.update(json.load(fh))
    return _META


def _per_sample(outputs, n=None):
    """[N, T, C] from the model's [T, N, C] (or N one-sample outputs stacked on axis 0)."""
    arr = outputs.get(_meta()["output"])
    if arr is None:
        arr = next(iter(outputs.values()))
    arr = np.asarray(arr)
    steps = _meta()["steps"]
    if arr.ndim == 3 and arr.shape[1] == 1 and arr.shape[0] > steps and arr.shape[0] % steps == 0:
        arr = arr.reshape(arr.shape[0] // steps, steps, arr.shape[2])  # [N*T, 1, C] -> [N, T, C]
    elif arr.ndim == 3:
        arr = arr.transpose(1, 0, 2)
    if n is not None and len(arr) != n:
        raise ValueError(f"output {arr.shape} does not hold {n} samples")
    return arr


def decode(outputs, n=None):
    cs = _meta()["charset"]
    out = []
    for row in _per_sample(outputs, n):
        if not np.isfinite(row).all():
            out.append(None)
            continue
        idx = row.argmax(-1)
        keep = np.ones(len(idx), bool)
        keep[1:] = idx[1:] != idx[:-1]
        out.append("".join(cs[i] for i in idx[keep & (idx != 0)]))
    return out


def score(outputs, labels):
    lab = np.asarray(labels).reshape(-1)
    texts = _meta()["texts"]
    got = decode(outputs, len(lab))
    return np.array([float(g is not None and g == texts[int(i)]) for g, i in zip(got, lab)], np.float64)


def agree(a, b):
    da, db = decode(a), decode(b)
    return np.array([float(x is not None and x == y) for x, y in zip(da, db)], np.float64)
