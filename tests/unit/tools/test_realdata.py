"""tools/realdata.py: realistic labelled data sets for the corpus models (small builds, < 60 s).

Skipped, naming the fetch command, when the corpus model is absent (as tests/corpus/conftest.py).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "tools"))
import corpus  # noqa: E402
import realdata  # noqa: E402

COUNTS = {"calib": 4, "search": 4, "test": 8}
FLOOR = {"ppocrv4_rec": 0.5, "ppocr_cls": 0.75, "ppocrv4_det": 0.6}  # FP32's own score on its 8 test samples
SHAPE = {"ppocrv4_rec": (3, 48, 320), "ppocr_cls": (3, 48, 192), "ppocrv4_det": (3, 320, 320)}


def _need(name: str) -> None:
    root = corpus.cache_dir()
    if not corpus.model_path(root, corpus.by_name(name)).exists():
        pytest.skip(f"corpus model {name} absent from {root}: run `python tools/corpus.py fetch --only {name}`")


@pytest.fixture(scope="module", params=sorted(FLOOR))
def built(request, tmp_path_factory):
    name = request.param
    _need(name)
    base = tmp_path_factory.mktemp(name)
    res = [realdata.make(name, base / d, COUNTS, seed=0, log=lambda *_: None) for d in ("a", "b")]
    return name, base, res


def test_files_and_shapes(built):
    name, base, _ = built
    d = base / "a"
    want = {"calib.npz", "search.npz", "search.labels.npy", "test.npz", "test.labels.npy"}
    assert want | {"labels.json", "metric.py", "README.txt"} <= {p.name for p in d.iterdir()}
    assert not [p for p in base.iterdir() if p.name.startswith(".")], "temporary build folders left behind"
    for split in realdata.SPLITS:
        with np.load(d / f"{split}.npz") as z:
            assert list(z.keys()) == ["x"]
            assert z["x"].dtype == np.float32 and len(z["x"]) == COUNTS[split] and np.isfinite(z["x"]).all()
            assert z["x"].shape[1:] == SHAPE[name]
        if split != "calib":
            lab = np.load(d / f"{split}.labels.npy")
            assert lab.dtype == np.int64 and lab.shape == (COUNTS[split],)
    assert "FP32" in (d / "README.txt").read_text()


def test_deterministic(built):
    _, base, _ = built
    a, b = base / "a", base / "b"
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for n in names:
        assert (a / n).read_bytes() == (b / n).read_bytes(), f"{n} differs between two builds with seed 0"


def test_disjoint_splits(built):
    name, base, _ = built
    doc = json.loads((base / "a" / "labels.json").read_text())
    items = doc["items"]
    if name != "ppocrv4_det":  # one string per sample (det: the lines of every page)
        assert [len(items[s]) for s in realdata.SPLITS] == [COUNTS[s] for s in realdata.SPLITS]
    seen = [t.strip() for s in realdata.SPLITS for t in items[s]]
    assert len(seen) == len(set(seen)), "a string appears twice (within or across splits)"
    if name == "ppocrv4_rec":  # labels index the split's own strings
        for split in ("search", "test"):
            lab = np.load(base / "a" / f"{split}.labels.npy")
            assert [doc["texts"][i] for i in lab] == items[split]
    elif name == "ppocrv4_det":  # labels index the split's own pages
        for split in ("search", "test"):
            lab = np.load(base / "a" / f"{split}.labels.npy")
            assert [t for i in lab for t in doc["pages"][i]["lines"]] == items[split]
    else:  # class ids, half of each split turned by 180 degrees
        for split in ("search", "test"):
            lab = np.load(base / "a" / f"{split}.labels.npy")
            assert set(lab.tolist()) == {0, 1} and lab.sum() == COUNTS[split] // 2


def test_fp32_scores_above_floor(built):
    name, _, res = built
    assert res[0]["fp32_test"] == res[1]["fp32_test"]
    assert res[0]["fp32_test"] >= FLOOR[name], f"FP32 scores {res[0]['fp32_test']} on its own {name} data"


def test_metric_imports_standalone(built, tmp_path):
    """metric.py from a copied folder, in an isolated interpreter without tools/ on the path."""
    name, base, _ = built
    copy = tmp_path / "copied"
    shutil.copytree(base / "a", copy)
    sess = realdata.session(realdata.model_file(name))
    with np.load(copy / "test.npz") as z:
        ref = realdata.run_model(sess, {"x": z["x"]})
    np.savez(tmp_path / "outputs.npz", **{f"o{i}": v for i, v in enumerate(ref.values())})
    names = list(ref)
    script = textwrap.dedent(f"""
        import importlib.util, json, sys
        import numpy as np
        spec = importlib.util.spec_from_file_location("m", {str(copy / "metric.py")!r})
        m = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(m)
        z = np.load({str(tmp_path / "outputs.npz")!r})
        out = {{n: z[f"o{{i}}"] for i, n in enumerate({names!r})}}
        lab = np.load({str(copy / "test.labels.npy")!r})
        s, a = m.score(out, lab), m.agree(out, out)
        bad = {{n: np.full_like(v, np.nan) for n, v in out.items()}}
        sn, an = m.score(bad, lab), m.agree(bad, out)
        mods = sorted(k.split(".")[0] for k in sys.modules if k.split(".")[0] in ("realdata", "corpus", "calibkit"))
        print(json.dumps([s.tolist(), a.tolist(), sn.tolist(), an.tolist(), mods]))
    """)
    proc = subprocess.run(
        [sys.executable, "-I", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    s, a, sn, an, mods = json.loads(proc.stdout)
    assert len(s) == COUNTS["test"] and all(0 <= v <= 1 for v in s)
    assert np.mean(s) >= FLOOR[name]
    assert a == [1.0] * COUNTS["test"]
    assert sn == [0.0] * COUNTS["test"] and an == [0.0] * COUNTS["test"], "NaN outputs must count as misses"
    assert mods == []


def test_seed_changes_data(built, tmp_path):
    name, base, _ = built
    realdata.make(name, tmp_path / "s1", COUNTS, seed=1, log=lambda *_: None, check=False)
    assert (tmp_path / "s1" / "test.npz").read_bytes() != (base / "a" / "test.npz").read_bytes()


def test_cli_list():
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "realdata.py"), "list"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert all(n in proc.stdout for n in realdata.DATASETS)
