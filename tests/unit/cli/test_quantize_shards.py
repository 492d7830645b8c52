"""quantize --shards K: the calibration data's sufficiency, as calibrate --shards reports it,
in quantize's own output set; the quantized model is the same bytes as without --shards."""

from __future__ import annotations

import json

from test_shards import _exposure_net, _images


def test_quantize_shards_flags_few_samples_and_changes_nothing_else(cli, tmp_path):
    model = _exposure_net(tmp_path / "m.onnx")
    val = _images(tmp_path / "val.npz", 16, 9)
    few = _images(tmp_path / "few.npz", 16, 0)
    r = cli(
        "quantize",
        model,
        "--data",
        few,
        "--val",
        val,
        "--shards",
        "4",
        "--shard-tolerance",
        "0.1",
        "-o",
        tmp_path / "few",
        expect=3,
    )
    assert "calibration data is not enough" in r.stderr and "sufficiency.json" in r.stderr, r.stderr
    doc = json.loads((tmp_path / "few" / "sufficiency.json").read_text())
    assert doc["enough"] is False and doc["samples"] == [4, 4, 4, 4]
    q = json.loads((tmp_path / "few" / "quantize.json").read_text())
    assert q["sufficiency"]["enough"] is False and "sufficiency.json" in q["files"]
    assert any(w.startswith("calibration data: add data") for w in q["warnings"])
    cli("quantize", model, "--data", few, "--val", val, "-o", tmp_path / "plain")
    for name in ("m.qdq.onnx", "scales.json", "histograms.npz", "m.recovered.cache"):
        assert (tmp_path / "few" / name).read_bytes() == (tmp_path / "plain" / name).read_bytes(), name
    many = _images(tmp_path / "many.npz", 512, 0)
    cli(
        "quantize",
        model,
        "--data",
        many,
        "--val",
        val,
        "--shards",
        "4",
        "--shard-tolerance",
        "0.1",
        "-o",
        tmp_path / "many",
    )
    doc = json.loads((tmp_path / "many" / "sufficiency.json").read_text())
    assert doc["enough"] is True and doc["samples"] == [128] * 4


def test_quantize_bad_shards_is_one_line(cli, tmp_path):
    model = _exposure_net(tmp_path / "m.onnx")
    data = _images(tmp_path / "d.npz", 8, 0)
    for k in ("1", "0", "-2"):
        r = cli("quantize", model, "--data", data, "--val", data, "--shards", k, "-o", tmp_path / "o", expect=1)
        assert "--shards" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()
