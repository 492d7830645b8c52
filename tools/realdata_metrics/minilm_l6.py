"""Metric of a tools/realdata.py minilm_l6 folder (standalone: numpy + stdlib).

score(outputs, labels): 1.0 where the sample's sentence embedding (last_hidden_state mean-pooled
over its real tokens, L2 normalised, as sentence-transformers) has its own paraphrase partner as
the nearest row (cosine) of gallery.npy (FP32 embeddings of every partner); labels are row
indices into the gallery and labels.json. agree(a, b): 1.0 where the cosine between the two
outputs' embeddings is >= 0.99; agree gets no labels, so it pools over every position.
A NaN/inf embedding is a miss (and a disagreement).
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
        _META["_gallery"] = np.load(os.path.join(_HERE, _META["gallery"])).astype(np.float64)
    return _META


def _hidden(outputs):
    arr = outputs.get("last_hidden_state")
    if arr is None:
        arr = next(iter(outputs.values()))
    return np.asarray(arr, np.float64)


def _pool(hidden, lengths=None):
    if lengths is None:
        e = hidden.mean(1)
    else:
        m = (np.arange(hidden.shape[1])[None, :] < np.asarray(lengths)[:, None]).astype(np.float64)
        e = (hidden * m[..., None]).sum(1) / np.maximum(m.sum(1), 1)[:, None]
    with np.errstate(all="ignore"):
        e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    return e, np.isfinite(e).all(1)


def score(outputs, labels):
    meta = _meta()
    lab = np.asarray(labels).reshape(-1).astype(np.int64)
    e, ok = _pool(_hidden(outputs), [meta["lengths"][i] for i in lab])
    sims = np.nan_to_num(e, nan=0.0, posinf=0.0, neginf=0.0) @ meta["_gallery"].T
    return ((sims.argmax(1) == lab) & ok).astype(np.float64)


def agree(a, b):
    (ea, oka), (eb, okb) = _pool(_hidden(a)), _pool(_hidden(b))
    cos = np.where(oka & okb, (np.nan_to_num(ea) * np.nan_to_num(eb)).sum(1), 0.0)
    return (cos >= 0.99).astype(np.float64)
