"""Report wording and numbers (issue 22): ties are called ties, numbers carry the precision the
data supports, no Python reprs, infinities explained, every threshold line visible."""

from __future__ import annotations

import math

import numpy as np

from calibkit.numerics.histogram import TensorHistogram
from calibkit.report import figures
from calibkit.report.html import _exact, best_line, per_second, plain, points


def test_points_at_the_precision_of_one_sample():
    assert points(-0.4024144869, 497) == "-0.4"  # one sample of 497 is 0.2 points
    assert points(99.39637826, 497) == "99.4"
    assert points(0.0, 497) == "0" and points(-0.0001, 497) == "0"
    assert points(-2.5, 40) == "-2"  # 2.5 points a sample: whole points (rounded half to even)
    assert points(1.23456, 20000) == "1.235"  # 0.005 points a sample: three decimals
    assert points(None, 10) == "–"


def test_rates_are_plain_numbers():
    assert per_second(14032.4) == "14,032" and per_second(3.14159) == "3.1" and "e+" not in per_second(1.4e4)


def test_no_python_reprs():
    assert plain(None) == "none"
    assert plain(["CPUExecutionProvider"]) == "CPUExecutionProvider"
    assert plain(["a", "b"]) == "a, b" and plain({"x": 1}) == "x 1"


def test_infinite_sqnr_is_explained():
    assert _exact(math.inf) == "∞ (exact)" and _exact("inf") == "∞ (exact)" and _exact(31.5) == 31.5


def test_banner_names_a_tie_as_a_tie():
    doc = {
        "best": "ort-int8 (mse)",
        "candidates": [
            {"label": "ort-fp32", "rank": None},
            {"label": "ort-int8 (mse)", "rank": "1="},
            {"label": "ort-int8 (entropy)", "rank": "1="},
            {"label": "ort-int8 (minmax)", "rank": "3"},
        ],
    }
    assert best_line(doc) == "tied for best (within the run's noise): ort-int8 (mse), ort-int8 (entropy)"
    doc["candidates"][2]["rank"] = "2"
    assert best_line(doc) == "best candidate: ort-int8 (mse)"


def test_threshold_lines_at_the_same_amax_are_one_labelled_line(monkeypatch):
    h = TensorHistogram()
    h.update(np.random.default_rng(0).normal(0, 1, 10000).astype(np.float32))
    seen = []
    plt = figures._plt()
    real = plt.Axes.axvline

    def spy(self, x, **kw):
        seen.append((x, kw["label"], kw["ls"]))
        return real(self, x, **kw)

    monkeypatch.setattr(plt.Axes, "axvline", spy)
    figures.threshold_plot("t", h, {"A (entropy)": 2.5, "B (mse)": 2.5, "C (minmax)": 3.9}, figures.palette(["A", "B"]))
    amaxes = [x for x, _, _ in seen]
    assert len(amaxes) == len(set(amaxes))  # no line drawn over another
    assert any("A (entropy) = B (mse): 2.5" == label for _, label, _ in seen), seen
    assert len({str(ls) for _, _, ls in seen}) == len(seen)  # every line its own dash pattern


def test_clip_advice_inside_compare_does_not_send_you_to_compare():
    from calibkit.numerics.clipping import ClipWarning
    from calibkit.validate import _clip_doc

    w = ClipWarning("pool", "percentile:99.0", 0.0097, 3.47, 7.01, 0.001)
    assert "calibkit compare" in w.message()  # after calibrate: the advice is to compare
    assert "calibkit compare" not in w.message(in_compare=True)
    doc = _clip_doc([w], 0.001, in_compare=True)
    assert doc["count"] == 1 and "calibkit compare" not in doc["tensors"][0]["message"]
