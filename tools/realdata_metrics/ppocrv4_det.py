"""Metric of a tools/realdata.py ppocrv4_det folder (standalone: numpy + stdlib).

score(outputs, labels): per page, pixel F1 of (probability map > 0.3) against the union of the
page's label rectangles in labels.json (DB shrink-map targets); labels are page indices.
agree(a, b): pixel F1 between the two thresholded maps (1.0 when both are empty).
A map holding NaN/inf scores 0.
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


def _maps(outputs):
    arr = np.asarray(next(iter(outputs.values())) if len(outputs) == 1 else outputs["sigmoid_0.tmp_0"])
    arr = arr.reshape(len(arr), arr.shape[-2], arr.shape[-1])
    ok = np.isfinite(arr).all(axis=(1, 2))
    return arr > _meta()["threshold"], ok


def _f1(p, m):
    denom = int(p.sum()) + int(m.sum())
    return 1.0 if denom == 0 else 2.0 * int((p & m).sum()) / denom


def mask(index, shape):
    m = np.zeros(shape, bool)
    for x0, y0, x1, y1 in _meta()["pages"][int(index)]["label_rects"]:
        m[y0:y1, x0:x1] = True
    return m


def score(outputs, labels):
    maps, ok = _maps(outputs)
    lab = np.asarray(labels).reshape(-1)
    return np.array([_f1(p, mask(i, p.shape)) if k else 0.0 for p, i, k in zip(maps, lab, ok)], np.float64)


def agree(a, b):
    (pa, oka), (pb, okb) = _maps(a), _maps(b)
    return np.array([_f1(x, y) if i and j else 0.0 for x, y, i, j in zip(pa, pb, oka, okb)], np.float64)
