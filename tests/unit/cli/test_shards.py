"""calibrate --shards K: is the calibration set large enough?

The model is a Conv on 32x32 single-channel images whose exposure varies from image to image
(pixel values U(0, 1) times a per-image gain U(0.2, 1.0)), as photographs under changing light.
Every tensor's amax is set by the brightest images. With 16 images, each of 4 parts holds 4
images and whether one of them is bright is luck: the parts' percentile:99.99 amax differ by
18-34% (seeds 0-3). With 512 images, each part holds 128 and always some bright ones: they
agree within 1.6-3.4%. Within an image the 1024 pixels (8192 conv values) fill the histogram;
it is the number of images, not of values, that decides. (entropy moves more, 5-9% at 512:
its threshold is a jumpier estimator, so the test asks for percentile.)
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from calibkit import methods
from calibkit.artifacts import histograms as store


def _exposure_net(path):
    w = numpy_helper.from_array(np.random.default_rng(0).normal(0, 1 / 3, (8, 1, 3, 3)).astype(np.float32), "w")
    g = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["conv"], pads=[1, 1, 1, 1], name="conv"),
            helper.make_node("Relu", ["conv"], ["y"], name="relu"),
        ],
        "exposure",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 32, 32])],
        [w],
    )
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), path)
    return path


def _images(path, n: int, seed: int):
    rng = np.random.default_rng(seed)
    gain = rng.uniform(0.2, 1.0, (n, 1, 1, 1))
    np.savez(path, x=(gain * rng.uniform(0, 1, (n, 1, 32, 32))).astype(np.float32))
    return path


@pytest.mark.parametrize("seed", [0, 1])
def test_16_images_are_flagged_512_are_not(cli, tmp_path, seed):
    model = _exposure_net(tmp_path / "m.onnx")
    few = cli(
        "calibrate",
        model,
        "--data",
        _images(tmp_path / "few.npz", 16, seed),
        "--method",
        "percentile:99.99",
        "--shards",
        "4",
        "-o",
        tmp_path / "few",
        expect=3,
    )
    assert "NOT ENOUGH DATA: add data:" in " ".join(few.stdout.split())
    doc = json.loads((tmp_path / "few" / "sufficiency.json").read_text())
    assert doc["enough"] is False and doc["samples"] == [4, 4, 4, 4] and doc["tensors"][0]["spread"] > 0.15
    many = cli(
        "calibrate",
        model,
        "--data",
        _images(tmp_path / "many.npz", 512, seed),
        "--method",
        "percentile:99.99",
        "--shards",
        "4",
        "-o",
        tmp_path / "many",
    )
    assert "ENOUGH DATA: stable" in many.stdout
    doc = json.loads((tmp_path / "many" / "sufficiency.json").read_text())
    assert doc["enough"] is True and doc["samples"] == [128] * 4 and doc["tensors"][0]["spread"] < 0.05
    name, cfg = methods.parse_spec("percentile:99.99")
    parts = [store.load(tmp_path / "many" / "shards" / f"part-{i}-of-4.histograms.npz") for i in (1, 2, 3, 4)]
    for t in doc["tensors"]:  # the spread is what the parts' own histograms give
        want = [methods.get(name).amax(p.tensors[t["tensor"]], cfg) for p in parts]
        assert t["parts"] == pytest.approx(want, rel=1e-6)
        assert t["spread"] == pytest.approx((max(want) - min(want)) / t["amax"], rel=1e-5)


def test_parts_merge_to_the_plain_calibration_byte_for_byte(cli, tmp_path):
    model = _exposure_net(tmp_path / "m.onnx")
    data = _images(tmp_path / "d.npz", 37, 5)  # 37: parts of 10, 9, 9, 9
    cli("calibrate", model, "--data", data, "--shards", "4", "-o", tmp_path / "s", expect=None)
    cli("calibrate", model, "--data", data, "-o", tmp_path / "plain")
    for name in ("histograms.npz", "scales.json", "m.cache", "m.tensors.json"):
        assert (tmp_path / "s" / name).read_bytes() == (tmp_path / "plain" / name).read_bytes(), name
    parts = [store.load(tmp_path / "s" / "shards" / f"part-{i}-of-4.histograms.npz") for i in (1, 2, 3, 4)]
    assert [p.samples for p in parts] == [10, 9, 9, 9]
    # the same result with the image-folder path: parts are files, dealt out the same way
    cli("calibrate", model, "--data", data, "--shards", "4", "-o", tmp_path / "s", expect=None)  # re-run: same bytes
    assert (tmp_path / "s" / "scales.json").read_bytes() == (tmp_path / "plain" / "scales.json").read_bytes()


def test_bad_shards_are_one_line(cli, tmp_path):
    model = _exposure_net(tmp_path / "m.onnx")
    data = _images(tmp_path / "d.npz", 6, 0)
    for args, said in (
        (["--shards", "1"], "give a number of parts >= 2"),
        (["--shards", "4"], "6 samples cannot make 4 parts"),
        (["--shards", "2", "--no-rebatch"], "--no-rebatch"),
        (["--shards", "2", "--shard-tolerance", "0"], "--shard-tolerance"),
    ):
        r = cli("calibrate", model, "--data", data, *args, "-o", tmp_path / "o", expect=1)
        assert r.stderr.startswith("calibkit: error: ") and said in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "o").exists()


def test_a_few_valued_tensor_moving_its_amax_at_no_cost_is_stable():
    """Parts disagree on a tensor of a few distinct values (a rare top level only one part
    saw): the amax moves 23% between parts, but each part's amax quantizes the whole set with
    no more expected error, so that tensor does not call for more data. A continuous tensor
    whose amax moves as much still does."""
    import numpy as np

    from calibkit.artifacts.histograms import HistogramSet
    from calibkit.checks.sufficiency import spreads
    from calibkit.numerics.histogram import TensorHistogram

    def hist(x):
        h = TensorHistogram()
        h.update(np.asarray(x, np.float32))
        return h

    levels_a = np.r_[np.zeros(50000), np.ones(49999), 1.3]
    levels_b = np.r_[np.zeros(50000), np.ones(50000)]
    rng = np.random.default_rng(0)
    cont_a = rng.normal(0, 1, 10000)
    cont_a[0] = 6.0
    cont_b = np.clip(rng.normal(0, 1, 10000), -3.5, 3.5)
    parts = [
        HistogramSet({"levels": hist(levels_a), "cont": hist(cont_a)}, {"samples": 1}),
        HistogramSet({"levels": hist(levels_b), "cont": hist(cont_b)}, {"samples": 1}),
    ]
    whole = {"levels": hist(np.r_[levels_a, levels_b]).amax, "cont": hist(np.r_[cont_a, cont_b]).amax}
    rep = spreads(whole, parts, "minmax", None, 0.05)
    rows = {r.tensor: r for r in rep.rows}
    assert rows["levels"].spread > 0.2 and rows["levels"].regret <= 0.05 and rows["levels"].stable(0.05)
    assert rows["cont"].spread > 0.2 and rows["cont"].regret > 0.05 and not rows["cont"].stable(0.05)
    assert [r.tensor for r in rep.unstable()] == ["cont"] and not rep.enough
