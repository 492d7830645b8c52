"""Image-folder source: Pillow decode, resize, centre crop, scale, mean/std, layout.

Preprocessing comes from flags or a small JSON file (``--preprocess FILE``), e.g.::

    {"size": [224, 224], "resize": 256, "scale": 0.00392156862745098,
     "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
     "channels": "RGB", "layout": "NCHW"}

Images are read in sorted path order (recursively), one decoded image in memory at a time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from calibkit.data.base import Feed, hash_files
from calibkit.errors import CalibkitError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
CHANNELS = ("RGB", "BGR", "L")
LAYOUTS = ("NCHW", "NHWC")


@dataclass(frozen=True)
class Preprocess:
    size: tuple[int, int] | None = None  # (H, W) of the centre crop; None: from the model
    resize: int | None = None  # shorter side before cropping; None: resize straight to size
    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    channels: str = "RGB"
    layout: str = "NCHW"
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.channels, str) or self.channels not in CHANNELS:
            raise CalibkitError(f"preprocess channels {self.channels!r} must be one of {', '.join(CHANNELS)}")
        if not isinstance(self.layout, str) or self.layout not in LAYOUTS:
            raise CalibkitError(f"preprocess layout {self.layout!r} must be one of {', '.join(LAYOUTS)}")
        if self.size is not None and not (
            isinstance(self.size, tuple) and len(self.size) == 2 and all(_int(v) and v > 0 for v in self.size)
        ):
            raise CalibkitError(f"preprocess size must be two positive ints H,W; got {_show(self.size)}")
        if self.resize is not None and not (_int(self.resize) and self.resize > 0):
            raise CalibkitError(
                f"preprocess resize must be a positive int (the shorter side, in pixels) or null; got {_show(self.resize)}"
            )
        if not _number(self.scale) or self.scale <= 0:
            raise CalibkitError(
                f"preprocess scale must be a finite number > 0 (e.g. 0.00392156862745098 for 1/255); got {_show(self.scale)}"
            )
        n = 1 if self.channels == "L" else 3
        for key in ("mean", "std"):
            v = getattr(self, key)
            if not (isinstance(v, tuple) and len(v) in (1, n) and all(_number(x) for x in v)):
                raise CalibkitError(
                    f"preprocess {key} must be 1 or {n} finite numbers for channels {self.channels}; got {_show(v)}"
                )
        if any(s == 0 for s in self.std):
            raise CalibkitError("preprocess std must not contain 0")

    @classmethod
    def from_file(cls, path: str | Path) -> Preprocess:
        p = Path(path)
        try:
            raw = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CalibkitError(f"preprocess file {p} not found") from None
        except IsADirectoryError:
            raise CalibkitError(f"preprocess file {p} is a directory; pass the preprocess .json file") from None
        except json.JSONDecodeError as exc:
            raise CalibkitError(f"preprocess file {p} is not valid JSON: line {exc.lineno}: {exc.msg}") from None
        except (ValueError, RecursionError) as exc:  # not UTF-8, a > 4300-digit integer, nesting too deep
            raise CalibkitError(
                f"preprocess file {p} is not valid JSON ({type(exc).__name__}); write it as a JSON object"
            ) from None
        except OSError as exc:
            raise CalibkitError(f"cannot read preprocess file {p}: {exc.strerror}") from None
        return cls.from_dict(raw, where=str(p))

    @classmethod
    def from_dict(cls, raw: dict, where: str = "preprocess") -> Preprocess:
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        if not isinstance(raw, dict):
            raise CalibkitError(
                f"{where}: expected a JSON object with keys {', '.join(sorted(known))}; got {type(raw).__name__}"
            )
        unknown = sorted(set(raw) - known)
        if unknown:
            raise CalibkitError(f"{where}: unknown key {unknown[0]!r}; known keys: {', '.join(sorted(known))}")
        vals = dict(raw)
        for k in ("size", "mean", "std"):
            if k in vals and vals[k] is not None:
                vals[k] = tuple(vals[k]) if isinstance(vals[k], (list, tuple)) else (vals[k],)
        for k in ("mean", "std", "scale", "channels", "layout"):  # null: the default
            if k in vals and vals[k] is None:
                del vals[k]
        try:
            return cls(**vals)
        except CalibkitError as exc:
            if where == "preprocess":
                raise
            raise CalibkitError(f"{where}: {exc}") from None

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("extra")
        return d

    def fingerprint(self) -> str:
        return "sha256:" + hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _show(v) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def list_images(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


class ImageFolderSource:
    hashes_files = True  # fingerprint() hashes the files: no streamed hash needed
    workers = 0  # > 1: decode and preprocess in that many processes (--workers)

    def __init__(self, root: Path, input_name: str, pre: Preprocess, model_shape: tuple = ()) -> None:
        from PIL import Image  # noqa: F401  (fail early with a clear error if Pillow is absent)

        self.root = root
        self.input_name = input_name
        self.files = list_images(root)
        self.description = f"images {root}"
        if not self.files:
            raise CalibkitError(
                f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {root}; point --data at a folder of images"
            )
        size = pre.size
        if size is None and len(model_shape) == 4:
            hw = model_shape[2:4] if pre.layout == "NCHW" else model_shape[1:3]
            if all(isinstance(d, int) for d in hw):
                size = (int(hw[0]), int(hw[1]))
        self.pre = dataclasses.replace(pre, size=size)

    def num_samples(self) -> int | None:
        return len(self.files)

    def fingerprint(self) -> str | None:
        return hash_files(self.files, self.root)

    def load(self, path: Path) -> np.ndarray:
        return load_image(path, self.pre)

    def batches(self) -> Iterator[Feed]:
        if self.workers > 1:  # decoded in worker processes, in order (results do not change)
            from calibkit.data.prefetch import ordered_map

            for a in ordered_map(load_image, self.files, self.pre, workers=self.workers):
                yield {self.input_name: a[None]}
            return
        for path in self.files:
            yield {self.input_name: self.load(path)[None]}


def load_image(path: Path, pre: Preprocess) -> np.ndarray:
    """One image file -> preprocessed float32 array (module level: worker processes run it)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.mode.startswith(("I", "F")):  # I;16 (16-bit PNG), I (32-bit), F (float TIFF)
                raise CalibkitError(
                    f"image {path} has {im.mode} pixels (16-bit, 32-bit or float): calibkit decodes 8-bit images "
                    "(0-255, then --scale/--mean/--std), and converting would clip every value above 255; convert "
                    "the images to 8 bits, or give the data as .npy/.npz with your own preprocessing"
                )
            im = im.convert("L" if pre.channels == "L" else "RGB")
            if pre.size is not None:
                h, w = pre.size
                if pre.resize:
                    r = pre.resize / min(im.size)
                    im = im.resize((max(w, round(im.size[0] * r)), max(h, round(im.size[1] * r))), Image.BILINEAR)
                    left, top = (im.size[0] - w) // 2, (im.size[1] - h) // 2
                    im = im.crop((left, top, left + w, top + h))
                elif im.size != (w, h):
                    im = im.resize((w, h), Image.BILINEAR)
            a = np.asarray(im, dtype=np.float32)
    except (UnidentifiedImageError, OSError) as exc:
        raise CalibkitError(f"cannot read image {path}: {exc}") from None
    except Image.DecompressionBombError as exc:  # more pixels than Pillow agrees to decode
        raise CalibkitError(
            f"image {path} is too large to decode ({exc}); resize it, or give the data as .npy/.npz"
        ) from None
    if a.ndim == 2:
        a = a[:, :, None]
    if pre.channels == "BGR":
        a = a[:, :, ::-1]
    a = (a * np.float32(pre.scale) - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
    if pre.layout == "NCHW":
        a = a.transpose(2, 0, 1)
    return np.ascontiguousarray(a, dtype=np.float32)
