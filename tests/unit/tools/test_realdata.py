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
# FP32's own score on its 8 test samples must reach this (measured on 128: rec 0.91, cls 0.99,
# det 0.88, minilm 0.77, ddddocr 0.71, oww 1 by construction)
FLOOR = {
    "ppocrv4_rec": 0.5,
    "ppocr_cls": 0.75,
    "ppocrv4_det": 0.6,
    "minilm_l6": 0.5,
    "ddddocr_common": 0.25,
    "oww_embedding": 1.0,
}
_TOKENS = {k: ((64,), np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
INPUTS = {  # input name -> (sample shape, dtype)
    "ppocrv4_rec": {"x": ((3, 48, 320), np.float32)},
    "ppocr_cls": {"x": ((3, 48, 192), np.float32)},
    "ppocrv4_det": {"x": ((3, 320, 320), np.float32)},
    "minilm_l6": _TOKENS,
    "ddddocr_common": {"input1": ((1, 64, 160), np.float32)},
    "oww_embedding": {"input_1": ((76, 32, 1), np.float32)},
}
RUN = {"ddddocr_common": {"batch": 1, "out_axis": 1}}  # batch fixed at 1, output [T, N, C]
TEXTS = {"ppocrv4_rec": "texts", "ddddocr_common": "texts", "oww_embedding": "texts", "minilm_l6": "headwords"}


def _need(name: str) -> None:
    root = corpus.cache_dir()
    if not corpus.model_path(root, corpus.by_name(name)).exists():
        pytest.skip(f"corpus model {name} absent from {root}: run `python tools/corpus.py fetch --only {name}`")
    if name == "oww_embedding" and shutil.which("espeak-ng") is None:
        pytest.skip("oww_embedding needs espeak-ng: apt-get install espeak-ng")
    if name == "minilm_l6" and not (
        Path("/usr/share/wordnet/index.noun").exists() and Path("/usr/share/dictd/gcide.index").exists()
    ):
        pytest.skip("minilm_l6 needs WordNet and GCIDE: apt-get install wordnet-base dict-gcide")


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
            assert sorted(z.keys()) == sorted(INPUTS[name])
            for k, (shape, dtype) in INPUTS[name].items():
                assert z[k].dtype == dtype and z[k].shape == (COUNTS[split], *shape) and np.isfinite(z[k]).all()
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
    if name in TEXTS:  # labels index the split's own strings
        for split in ("search", "test"):
            lab = np.load(base / "a" / f"{split}.labels.npy")
            assert [doc[TEXTS[name]][i] for i in lab] == items[split]
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
        ref = realdata.run_model(sess, dict(z), **RUN.get(name, {}))
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


def test_minilm_wordpiece_matches_tokenizers():
    """ids the exported model's tokenizer.json gives (HF tokenizers 0.22.2 in the corpus export venv)."""
    _need("minilm_l6")
    import realdata_minilm

    tok = realdata_minilm.WordPiece(realdata.model_file("minilm_l6").parent / "vocab.txt")
    assert tok.ids("A stick used as a handle of a broom.") == [
        101,
        1037,
        6293,
        2109,
        2004,
        1037,
        5047,
        1997,
        1037,
        23528,
        1012,
        102,
    ]
    s = "A bookbinder's shop; a place (or establishment) for binding books, esp. in 1913."
    assert tok.ids(s) == [101, 1037, 2338, 8428, 4063, 1005, 1055, 4497, 1025, 1037, 2173, 1006, 2030, 5069, 1007, 2005, 8031, 2808, 1010, 9686, 2361, 1012, 1999, 5124, 1012, 102]  # fmt: skip
