"""Metric of a tools/realdata.py ppocrv4_rec folder (standalone: numpy + stdlib).

score(outputs, labels): 1.0 where the greedy CTC decode of the recognizer's softmax output
equals the rendered string (case-sensitive, both stripped), else 0.0; labels are indices into
labels.json "texts". agree(a, b): 1.0 where the two outputs decode to the same string.
A row holding NaN/inf decodes to nothing valid and counts as a miss.
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


def _probs(outputs):
    arr = outputs.get(_meta()["output"])
    if arr is None:
        if len(outputs) != 1:
            raise KeyError(f"output {_meta()['output']!r} not among {sorted(outputs)}")
        arr = next(iter(outputs.values()))
    return np.asarray(arr)


def decode(outputs):
    """Greedy CTC: argmax per step, merge repeats, drop the blank (index 0). None for NaN rows."""
    classes = _meta()["ctc_classes"]
    probs = _probs(outputs)
    out = []
    for row in probs:
        if not np.isfinite(row).all():
            out.append(None)
            continue
        idx = row.argmax(-1)
        keep = np.ones(len(idx), bool)
        keep[1:] = idx[1:] != idx[:-1]
        out.append("".join(classes[i] for i in idx[keep & (idx != 0)]))
    return out


def score(outputs, labels):
    texts = _meta()["texts"]
    got = decode(outputs)
    want = [texts[int(i)].strip() for i in np.asarray(labels).reshape(-1)]
    return np.array([float(g is not None and g.strip() == w) for g, w in zip(got, want)], np.float64)


def agree(a, b):
    da, db = decode(a), decode(b)
    return np.array([float(x is not None and x == y) for x, y in zip(da, db)], np.float64)
