"""Calibration/validation data sources and the feeder that validates and re-batches them."""

from __future__ import annotations

from pathlib import Path

from calibkit.data.arrays import NpySource, NpzSource
from calibkit.data.base import DataSource, Feed, IterableSource
from calibkit.data.feed import Batch, FeedStats, check_feed, run_batches
from calibkit.data.images import ImageFolderSource, Preprocess, list_images
from calibkit.data.script import ScriptSource
from calibkit.errors import CalibkitError
from calibkit.graph.model import InputSpec

__all__ = [
    "applied_preprocess",
    "is_image_folder",
    "preprocess_fingerprint",
    "resolve_preprocess",
    "Batch",
    "DataSource",
    "Feed",
    "FeedStats",
    "IterableSource",
    "Preprocess",
    "check_feed",
    "open_source",
    "run_batches",
]


def _single(specs: list[InputSpec], what: str) -> InputSpec:
    if len(specs) != 1:
        names = ", ".join(s.name for s in specs)
        raise CalibkitError(
            f"{what} feeds one input but the model has {len(specs)} ({names}); use an .npz keyed by input name or a loader script"
        )
    return specs[0]


def applied_preprocess(source) -> Preprocess | None:
    """The image preprocessing a source really applies (None: the data is used as given)."""
    return source.pre if isinstance(source, ImageFolderSource) else None


def preprocess_fingerprint(source) -> str:
    pre = applied_preprocess(source)
    return pre.fingerprint() if pre is not None else "none: data used as given"


def is_image_folder(data) -> bool:
    return isinstance(data, (str, Path)) and Path(data).is_dir() and bool(list_images(Path(data)))


def resolve_preprocess(
    given: Preprocess | None, recorded: dict | None, data, allow_mismatch: bool, where: str
) -> Preprocess | None:
    """Validation preprocessing: the calibration's (recorded in ``where``) unless the user gave
    another; a difference is an error unless ``allow_mismatch``. Only image folders are affected."""
    if not is_image_folder(data) or not isinstance(recorded, dict):
        return given
    rec = {k: v for k, v in recorded.items() if k != "fingerprint"}
    try:
        calib = Preprocess.from_dict(rec, where=where)
    except (CalibkitError, TypeError):
        return given
    if given is None:
        return calib
    mine = given.to_dict()
    if mine.get("size") is None:
        mine["size"] = calib.to_dict().get("size")
    theirs = calib.to_dict()
    diff = [k for k in sorted(theirs) if _norm(theirs[k]) != _norm(mine.get(k))]
    if diff and not allow_mismatch:
        shown = "; ".join(f"{k} {_norm(mine.get(k))} vs calibration's {_norm(theirs[k])}" for k in diff)
        raise CalibkitError(
            f"validation preprocessing differs from the calibration preprocessing recorded in {where}: {shown}; "
            "drop the preprocessing flags to use the calibration's, or pass --allow-preprocess-mismatch"
        )
    return given


def _norm(v):
    return list(v) if isinstance(v, (list, tuple)) else v


def open_source(data, specs: list[InputSpec], preprocess: Preprocess | None = None) -> DataSource:
    """Pick the source for ``data``: a folder of images, .npz, .npy, ``script.py[:fn]`` or an iterable."""
    if data is None:
        raise CalibkitError("no data given; pass --data DIR|FILE.npz|FILE.npy|script.py:load_data")
    if not isinstance(data, (str, Path)):
        return IterableSource(data)
    text = str(data)
    if ".py:" in text or text.endswith(".py"):
        return ScriptSource(text)
    path = Path(text)
    if not path.exists() or not (path.is_dir() or path.is_file()):
        from calibkit.graph.model import not_a_file

        raise CalibkitError(
            f"data {path} {not_a_file(path)}; pass a folder of images, an .npz/.npy file or a loader script"
        )
    if path.is_dir():
        if list_images(path):
            spec = _single(specs, f"image folder {path}")
            return ImageFolderSource(path, spec.name, preprocess or Preprocess(), spec.shape)
        npz = sorted(path.glob("*.npz"))
        if len(npz) == 1:
            return NpzSource(npz[0], specs=specs)
        raise CalibkitError(f"data folder {path} holds no images and no single .npz; point --data at the data itself")
    if path.suffix == ".npz":
        return NpzSource(path, specs=specs)
    if path.suffix == ".npy":
        return NpySource(path, _single(specs, f"{path}").name)
    raise CalibkitError(
        f"data {path}: unsupported file type {path.suffix!r}; use a folder of images, .npz, .npy or a .py loader"
    )
