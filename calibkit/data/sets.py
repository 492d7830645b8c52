"""``./calibration_data/``: where a project keeps its calibration sets.

``calibkit calibrate MODEL`` with no ``--data`` reads ``calibration_data/<model stem>/`` (or
``<stem>.npz`` / ``<stem>.npy``), or ``calibration_data/`` itself when it holds one set (images,
or a single .npz/.npy, and no per-model folders). A set folder may hold ``preprocess.json``:
it is used when no preprocessing option is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from calibkit.data.images import list_images
from calibkit.errors import CalibkitError

ROOT = Path("calibration_data")
PREPROCESS = "preprocess.json"


@dataclass(frozen=True)
class DefaultSet:
    data: Path
    preprocess: Path | None  # the set's preprocess.json, if it has one
    why: str  # what the CLI says about the choice


def _arrays(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (".npz", ".npy"))


def find(model: str | Path, root: str | Path = ROOT) -> DefaultSet:
    """The calibration set of ``model`` under ``root``, or a CalibkitError saying what to do."""
    root, stem = Path(root), Path(model).stem
    if not root.is_dir():
        raise CalibkitError(
            f"no --data given and there is no ./{root}/ folder; pass --data PATH, or keep the set in "
            f"./{root}/{stem}/ (images or one .npz/.npy; see calibration_data/README.md in the calibkit repository)"
        )
    for cand in (root / stem, root / f"{stem}.npz", root / f"{stem}.npy"):
        if cand.exists():
            pre = cand / PREPROCESS if cand.is_dir() and (cand / PREPROCESS).is_file() else None
            return DefaultSet(cand, pre, f"the set named after the model, {cand}")
    subdirs = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    arrays = _arrays(root)
    if not subdirs and (list_images(root) or len(arrays) == 1):
        pre = root / PREPROCESS if (root / PREPROCESS).is_file() else None
        return DefaultSet(root, pre, f"{root}, which holds one set")
    held = ", ".join([*subdirs, *(p.name for p in arrays)]) or "nothing usable"
    raise CalibkitError(
        f"no --data given and ./{root}/ has no set for model {stem!r} (it holds: {held}); "
        f"name the set ./{root}/{stem}/ (or {stem}.npz), or pass --data PATH"
    )
