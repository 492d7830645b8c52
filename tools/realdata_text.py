"""Real English text and rendered text lines for tools/realdata.py.

Text: the licence texts under /usr/share/common-licenses (Debian's base-files: GPL, Apache-2.0,
BSD, MPL, ...) and the Zen of Python (the stdlib ``this`` module), cut into short phrases of
consecutive words; plus some numbers and dates (formatted from the seeded generator).
Rendering: PIL with the machine's TrueType fonts (DejaVu, Liberation, FreeFont where present;
matplotlib's bundled DejaVu otherwise), Pillow's BASIC layout engine (same glyph placement with
or without libraqm), dark ink on light, slightly varied backgrounds, noise, blur, JPEG.
"""

from __future__ import annotations

import codecs
import contextlib
import io
import math
import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

LICENSES = Path("/usr/share/common-licenses")
FONT_DIRS = [
    Path("/usr/share/fonts/truetype/dejavu"),
    Path("/usr/share/fonts/truetype/liberation"),
    Path("/usr/share/fonts/truetype/freefont"),
]
FONT_FILES = [  # clean text faces, in preference order
    "DejaVuSans.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSansCondensed.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSerifCondensed.ttf",
    "LiberationSans-Regular.ttf",
    "LiberationSerif-Regular.ttf",
    "LiberationSans-Bold.ttf",
    "LiberationSansNarrow-Regular.ttf",
    "LiberationMono-Regular.ttf",
    "FreeSans.ttf",
    "FreeSerif.ttf",
    "FreeSansBold.ttf",
]
WORD_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.,;:'()/&%$-]*$")
MONTHS = "January February March April May June July August September October November December".split()


def fonts() -> list[Path]:
    """The font files used, in a fixed order (matplotlib's DejaVu when the system has none)."""
    found = []
    for name in FONT_FILES:
        for d in FONT_DIRS:
            if (d / name).exists():
                found.append(d / name)
                break
    if not found:
        import matplotlib

        mpl = Path(matplotlib.__file__).parent / "mpl-data" / "fonts" / "ttf"
        found = [mpl / n for n in ("DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSans-Bold.ttf") if (mpl / n).exists()]
    if not found:
        raise SystemExit("no TrueType fonts found (apt-get install fonts-dejavu-core fonts-liberation)")
    return found


def sources() -> list[tuple[str, str]]:
    """(name, text) of every real text source present, in a fixed order."""
    out = []
    if LICENSES.is_dir():
        for p in sorted(LICENSES.iterdir()):
            if p.is_file() and not p.is_symlink():
                out.append((str(p), p.read_text(encoding="utf-8", errors="replace")))
    with contextlib.redirect_stdout(io.StringIO()):
        import this  # prints the Zen on first import; the text is rot13 in this.s

    out.append(("python stdlib module `this` (The Zen of Python)", codecs.decode(this.s, "rot13")))
    return out


def _clean_words(text: str) -> list[str]:
    words = []
    for w in text.split():
        w = w.strip('"`*_<>[]{}#=|')
        if w.startswith("(") and not w.endswith(")") and ")" not in w:
            w = w[1:]
        if w.endswith(")") and "(" not in w:
            w = w[:-1]
        if w and len(w) <= 14 and WORD_OK.match(w):
            words.append(w)
        else:
            words.append("")  # phrase break
    return words


def phrases(rng: np.random.Generator, min_words: int = 2, max_words: int = 5) -> list[str]:
    """Unique phrases of 2-5 consecutive words of the real sources, shuffled by ``rng``."""
    seen, out = set(), []
    for _, text in sources():
        words = _clean_words(text)
        i = 0
        while i < len(words):
            k = int(rng.integers(min_words, max_words + 1))
            chunk = words[i : i + k]
            i += k
            if "" in chunk or len(chunk) < min_words:
                j = chunk.index("") if "" in chunk else len(chunk)
                i = i - k + j + 1
                continue
            s = " ".join(chunk)
            if s not in seen and not re.fullmatch(r"[\d.,;:()-]+( [\d.,;:()-]+)*", s):
                seen.add(s)
                out.append(s)
    order = rng.permutation(len(out))
    return [out[i] for i in order]


def numeric(rng: np.random.Generator) -> str:
    """A number or date as written in English text (formatted from ``rng``)."""
    y, m, d = int(rng.integers(1950, 2031)), int(rng.integers(1, 13)), int(rng.integers(1, 29))
    kind = int(rng.integers(0, 8))
    if kind == 0:
        return f"{y}-{m:02d}-{d:02d}"
    if kind == 1:
        return f"{MONTHS[m - 1]} {d}, {y}"
    if kind == 2:
        return f"{d} {MONTHS[m - 1][:3]} {y}"
    if kind == 3:
        return f"{d:02d}/{m:02d}/{y}"
    if kind == 4:
        return f"${int(rng.integers(1, 5000)):,}.{int(rng.integers(0, 100)):02d}"
    if kind == 5:
        return f"{int(rng.integers(1000, 10_000_000)):,}"
    if kind == 6:
        return f"{rng.uniform(0, 100):.{int(rng.integers(1, 4))}f}%"
    return f"No. {int(rng.integers(1, 100000))}"


def text_stream(rng: np.random.Generator, numeric_share: float = 0.15):
    """Endless (text, is_numeric) mixing real phrases with numbers/dates; each text once."""
    seen = set()
    for p in phrases(rng):
        if rng.random() < numeric_share:
            s = numeric(rng)
            if s not in seen:
                seen.add(s)
                yield s
        if p not in seen:
            seen.add(p)
            yield p
    raise SystemExit("text sources exhausted: ask for fewer samples")


# ------------------------------------------------------------------------------------ rendering
def font(path: Path, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(path), size, layout_engine=ImageFont.Layout.BASIC)


def background(rng: np.random.Generator, h: int, w: int, photo: bool = False) -> np.ndarray:
    """Light float HxWx3 background: flat tint, a gradient, noise; ``photo``: blotches too."""
    base = rng.uniform(185, 250) + rng.uniform(-12, 12, 3)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ang = rng.uniform(0, 2 * math.pi)
    grad = (np.cos(ang) * xx / max(w, 1) + np.sin(ang) * yy / max(h, 1))[..., None] * rng.uniform(-30, 30, 3)
    img = base + grad
    if photo:
        for _ in range(int(rng.integers(2, 6))):
            cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0.1, 0.5) * max(h, w)
            blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))[..., None]
            img = img + blob * rng.uniform(-45, 25, 3)
    return img


def finish(rng: np.random.Generator, img: np.ndarray, blur_max: float = 0.9, noise_max: float = 7.0) -> np.ndarray:
    """Noise, blur and (sometimes) JPEG round trip of a float HxWx3 image -> uint8 RGB."""
    img = img + rng.normal(0, rng.uniform(0, noise_max), img.shape)
    pil = Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8))
    r = rng.uniform(0, blur_max)
    if r > 0.3:
        pil = pil.filter(ImageFilter.GaussianBlur(r))
    if rng.random() < 0.3:
        buf = io.BytesIO()
        pil.save(buf, "JPEG", quality=int(rng.integers(55, 95)))
        pil = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return np.asarray(pil, np.uint8)


def render_line(rng: np.random.Generator, text: str, font_files: list[Path], size=(22, 40)) -> np.ndarray:
    """One text line, tightly cropped with a small random margin (as a detector's crop): uint8 RGB."""
    f = font(font_files[int(rng.integers(len(font_files)))], int(rng.integers(size[0], size[1] + 1)))
    x0, y0, x1, y1 = f.getbbox(text)
    asc, desc = f.getmetrics()
    top, bottom = min(y0, 0), max(y1, asc + desc)
    mh = int(rng.integers(2, max(3, (bottom - top) // 4)))
    ml, mr = int(rng.integers(2, 12)), int(rng.integers(2, 12))
    h, w = bottom - top + 2 * mh, x1 - x0 + ml + mr
    img = background(rng, h, w)
    ink = rng.uniform(0, 80) + rng.uniform(-15, 15, 3)
    alpha = Image.new("L", (w, h), 0)
    ImageDraw.Draw(alpha).text((ml - x0, mh - top), text, fill=255, font=f)
    a = np.asarray(alpha, np.float32)[..., None] / 255.0 * rng.uniform(0.85, 1.0)
    img = img * (1 - a) + np.clip(ink, 0, 255) * a
    return finish(rng, img)


def resize_linear(img: np.ndarray, w: int, h: int) -> np.ndarray:
    """cv2.resize(img, (w, h)) with INTER_LINEAR (half-pixel centres, 2 taps), uint8 in and out."""

    def axis(n_out, n_in):
        x = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0)
        i0 = np.minimum(np.floor(x).astype(np.int64), n_in - 1)
        return i0, np.minimum(i0 + 1, n_in - 1), (x - i0).astype(np.float32)

    y0, y1, fy = axis(h, img.shape[0])
    x0, x1, fx = axis(w, img.shape[1])
    a = img.astype(np.float32)
    rows = a[y0] * (1 - fy)[:, None, None] + a[y1] * fy[:, None, None]
    out = rows[:, x0] * (1 - fx)[None, :, None] + rows[:, x1] * fx[None, :, None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def line_width(img: np.ndarray, height: int) -> int:
    """RapidOCR's resized width of a crop at ``height``: ceil(height * w / h)."""
    return int(math.ceil(height * img.shape[1] / float(img.shape[0])))


def norm_line(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """RapidOCR TextRecognizer/TextClassifier resize_norm_img: resize to ``height`` keeping the
    aspect (width capped at ``width``), (x/255-0.5)/0.5, CHW, zero padded on the right."""
    rw = min(width, line_width(img, height))
    r = resize_linear(img, rw, height).astype(np.float32).transpose(2, 0, 1) / 255
    out = np.zeros((3, height, width), np.float32)
    out[:, :, :rw] = (r - 0.5) / 0.5
    return out
