"""A publish journal is data from the disk (issue 21, item 2): a reader (`calibkit inspect`)
finishing an interrupted publish only moves files from DIR's own staging area to names in DIR,
refuses anything else with one clear line, and never writes outside DIR. Fuzzed journals and
manifests as inputs: a clean error or a clean read, never a traceback, nothing outside touched."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from calibkit.outputs.sets import META


def _env() -> dict:
    return {**os.environ, "COLUMNS": "80", "NO_COLOR": "1"}


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "calibkit", *map(str, args)], capture_output=True, text=True, env=_env(), timeout=300
    )


def _snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under root (files: their bytes; folders: None), .calibkit/lock aside."""
    out: dict[str, bytes | None] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.name == "lock":
            continue
        out[rel] = p.read_bytes() if p.is_file() and not p.is_symlink() else None
    return out


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    d = tmp_path_factory.mktemp("set")
    from models import conv_net

    model = conv_net(d / "conv.onnx")
    np.savez(d / "cal.npz", x=np.random.default_rng(7).normal(0, 1, (16, 3, 8, 8)).astype(np.float32))
    r = _cli("calibrate", model, "--data", d / "cal.npz", "-o", d / "cal")
    assert r.returncode == 0, r.stderr
    return d / "cal"


@pytest.fixture
def world(tmp_path, published):
    """DIR (a published set) beside an outside folder with a file and a folder of its own."""
    work = tmp_path / "dir"
    shutil.copytree(published, work)
    outside = tmp_path / "outside"
    (outside / "keepme").mkdir(parents=True)
    (outside / "keepme" / "precious.txt").write_text("do not touch")
    (outside / "scales.json").write_text("{}")
    (outside / "stage-x").mkdir()
    (outside / "stage-x" / "scales.json").write_text('{"evil": true}')
    return work, outside


def _hostile_journals(work: Path, outside: Path) -> dict[str, dict]:
    meta = work / META
    return {
        "rename from outside over DIR's file": {"moves": [[str(outside / "scales.json"), str(work / "scales.json")]]},
        "rename DIR's file to outside": {"moves": [[str(work / "scales.json"), str(outside / "stolen.json")]]},
        "stage folder outside (deleted afterwards)": {
            "moves": [[str(outside / "stage-x" / "scales.json"), str(work / "scales.json")]]
        },
        "dot-dot out of the stage": {
            "format": "calibkit-journal",
            "version": 2,
            "moves": [["stage-a/../../../outside/scales.json", "scales.json"]],
        },
        "target outside": {
            "format": "calibkit-journal",
            "version": 2,
            "moves": [["stage-a/x.json", "../outside/x.json"]],
        },
        "target renamed": {"format": "calibkit-journal", "version": 2, "moves": [["stage-a/x.json", "scales.json"]]},
        "absolute target": {
            "format": "calibkit-journal",
            "version": 2,
            "moves": [["stage-a/scales.json", str(outside / "scales.json")]],
        },
        "relative v1 paths": {"moves": [["../outside/stage-x/scales.json", "scales.json"]]},
        "symlinked stage": {
            "format": "calibkit-journal",
            "version": 2,
            "moves": [["stage-link/scales.json", "scales.json"]],
        },
        "moves not a list": {"moves": {"a": "b"}},
        "a move of three": {"format": "calibkit-journal", "version": 2, "moves": [["stage-a/x", "x", "y"]]},
        "null names": {"moves": [[None, None]]},
        "manifest name not a manifest": {
            "format": "calibkit-journal",
            "version": 2,
            "moves": [["stage-a/lock", f"{META}/lock"]],
        },
        "_stage_meta": {"_": str(meta)},
    }


CASES = [c for c in _hostile_journals(Path("/a"), Path("/b")) if not c.startswith("_")]


@pytest.mark.parametrize("case", CASES)
def test_inspect_refuses_a_journal_that_moves_outside_its_staging_area(world, case):
    work, outside = world
    meta = work / META
    (meta / "stage-a").mkdir()
    (meta / "stage-a" / "scales.json").write_text('{"planted": 1}')
    (meta / "stage-link").symlink_to(outside / "stage-x")
    (meta / "calibrate.journal.json").write_text(json.dumps(_hostile_journals(work, outside)[case]))
    before_out, before_files = (
        _snapshot(outside),
        {f: (work / f).read_bytes() for f in ("scales.json", "histograms.npz")},
    )
    r = _cli("inspect", work / "scales.json")
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == 1, (case, r.returncode, r.stdout, r.stderr)
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("calibkit: error: ") and "calibrate.journal.json" in line and "did nothing" in line, line
    assert _snapshot(outside) == before_out, case
    assert {f: (work / f).read_bytes() for f in before_files} == before_files, case


def test_a_good_journal_of_this_folder_is_still_finished(world, tmp_path):
    """The confinement refuses only what is outside: a version-2 journal cut off after its
    commit point is rolled forward by inspect as before."""
    work, _ = world
    meta = work / META
    stage = meta / "stage-20990101-abc"
    stage.mkdir()
    doc = json.loads((work / "scales.json").read_text())
    doc["note_from_the_new_run"] = 1
    (stage / "scales.json").write_text(json.dumps(doc))
    manifest = json.loads((meta / "calibrate.manifest.json").read_text())
    import hashlib

    manifest["files"]["scales.json"] = "sha256:" + hashlib.sha256((stage / "scales.json").read_bytes()).hexdigest()
    (stage / "calibrate.manifest.json").write_text(json.dumps(manifest))
    (meta / "calibrate.journal.json").write_text(
        json.dumps(
            {
                "format": "calibkit-journal",
                "version": 2,
                "moves": [
                    [f"{stage.name}/scales.json", "scales.json"],
                    [f"{stage.name}/calibrate.manifest.json", f"{META}/calibrate.manifest.json"],
                ],
            }
        )
    )
    r = _cli("inspect", work / "scales.json")
    assert r.returncode == 0, r.stderr
    assert json.loads((work / "scales.json").read_text())["note_from_the_new_run"] == 1
    assert not stage.exists() and not (meta / "calibrate.journal.json").exists()


def _mutations(doc, rng: random.Random, outside: Path):
    values = [None, 1, -1, 1e308, "", "..", "/", str(outside), "stage-a/../../x", [], {}, ["a"], "\u00e9\n", True]
    for _ in range(24):
        d = json.loads(json.dumps(doc))
        target = rng.choice(["moves", "entry", "name", "files", "whole"])
        if target == "whole":
            yield rng.choice(values)
        elif target == "moves":
            d["moves"] = rng.choice(values)
            yield d
        elif target in ("entry", "name") and d.get("moves"):
            k = rng.randrange(len(d["moves"]))
            if target == "entry":
                d["moves"][k] = rng.choice(values)
            else:
                d["moves"][k][rng.randrange(2)] = rng.choice(values)
            yield d
        else:
            d["files"] = rng.choice(values)
            yield d


@pytest.mark.parametrize("seed", range(4))
def test_fuzzed_journals_and_manifests_never_traceback_nor_touch_outside(world, seed):
    """In-process (the reader's own check, as every command calls it): a CalibkitError or a
    clean read for each mutated journal and manifest; the outside folder never changes."""
    from calibkit.errors import CalibkitError
    from calibkit.outputs.sets import verify

    work, outside = world
    meta = work / META
    rng = random.Random(seed)
    good_journal = {
        "format": "calibkit-journal",
        "version": 2,
        "moves": [
            ["stage-a/scales.json", "scales.json"],
            ["stage-a/calibrate.manifest.json", f"{META}/calibrate.manifest.json"],
        ],
    }
    manifest = json.loads((meta / "calibrate.manifest.json").read_text())
    before_out = _snapshot(outside)
    for k, (jdoc, mdoc) in enumerate(zip(_mutations(good_journal, rng, outside), _mutations(manifest, rng, outside))):
        trial = work.parent / f"trial-{seed}-{k}"
        shutil.copytree(work, trial, symlinks=True)
        tmeta = trial / META
        (tmeta / "stage-a").mkdir(exist_ok=True)
        (tmeta / "stage-a" / "scales.json").write_bytes((trial / "scales.json").read_bytes())
        if k % 2:
            (tmeta / "calibrate.journal.json").write_text(json.dumps(jdoc))
        else:
            (tmeta / "calibrate.manifest.json").write_text(json.dumps(mdoc))
        try:
            verify(trial / "scales.json")
        except CalibkitError as exc:
            assert "\n" not in str(exc)
        assert _snapshot(outside) == before_out, (jdoc, mdoc)
        shutil.rmtree(trial)
