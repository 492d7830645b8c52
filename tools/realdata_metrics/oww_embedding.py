"""Metric of a tools/realdata.py oww_embedding folder (standalone: numpy + stdlib).

score(outputs, labels): 1.0 where the cosine between the sample's output embedding and FP32's
(reference.npy, rows indexed by labels) is >= 0.99, else 0.0. agree(a, b): the same test between
two outputs, so score(candidate) == agree(candidate, FP32). NaN/inf embeddings are misses.
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
        _META["_ref"] = np.load(os.path.join(_HERE, _META["reference"])).astype(np.float64)
    return _META


def _emb(outputs):
    arr = np.asarray(next(iter(outputs.values())) if len(outputs) == 1 else outputs["conv2d_19"], np.float64)
    return arr.reshape(len(arr), -1)


def _cos_ok(x, y):
    ok = np.isfinite(x).all(1) & np.isfinite(y).all(1)
    x, y = np.nan_to_num(x), np.nan_to_num(y)
    with np.errstate(all="ignore"):
        cos = (x * y).sum(1) / np.maximum(np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1), 1e-30)
    return ((cos >= _meta()["threshold"]) & ok).astype(np.float64)


def score(outputs, labels):
    ref = _meta()["_ref"][np.asarray(labels).reshape(-1).astype(np.int64)]
    return _cos_ok(_emb(outputs), ref)


def agree(a, b):
    return _cos_ok(_emb(a), _emb(b))
