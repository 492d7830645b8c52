"""ddddocr_common data set of tools/realdata.py: rendered captcha-like strings.

ddddocr 1.5.6 DdddOcr(beta=True) runs common.onnx: PIL image resized to height 64 keeping the
aspect (Image.ANTIALIAS = LANCZOS), convert('L'), /255, (x-0.5)/0.5, [1, 1, 64, W]; output
[T, 1, C] (time-major), decoded by argmax, merged repeats, index 0 ("") dropped, charset from
the list literal in ddddocr/__init__.py that goes with common.onnx.
"""

from __future__ import annotations

import ast
import zipfile

import numpy as np
import realdata_text as T
from PIL import Image, ImageDraw, ImageFilter
from realdata import Built, model_file, split_counts

WHEEL = "ddddocr-1.5.6-py3-none-any.whl"
ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"  # lower case and digits without look-alikes (0/o, 1/l/i)
HEIGHTS = (40, 48, 60, 64, 80)  # native captcha sizes, all 2.5 wide: ddddocr's resize gives 160 x 64
ORDER = ("test", "search", "calib")


def charset() -> list[str]:
    """The charset DdddOcr(beta=True) pairs with common.onnx, read from the corpus wheel."""
    import corpus

    wheel = corpus.cache_dir() / "wheels" / WHEEL
    if not wheel.exists():
        raise SystemExit(f"{wheel} absent: run `python tools/corpus.py fetch --only ddddocr_common`")
    with zipfile.ZipFile(wheel) as zf:
        src = zf.read("ddddocr/__init__.py").decode("utf-8")
    at = src.index("'common.onnx')")
    lists = [
        n
        for n in ast.walk(ast.parse(src))
        if isinstance(n, ast.Assign)
        and isinstance(n.targets[0], ast.Attribute)
        and n.targets[0].attr == "__charset"
        and isinstance(n.value, ast.List)
        and len(n.value.elts) > 1000
    ]
    line = src[:at].count("\n") + 1
    node = min((n for n in lists if n.lineno > line), key=lambda n: n.lineno)
    return ast.literal_eval(node.value)


def captcha(rng, text: str, ff) -> Image.Image:
    """A captcha: tinted background, per-character font/size/colour/rotation/jitter, lines, dots, noise."""
    h = int(rng.choice(HEIGHTS))
    w = int(h * 2.5)
    img = Image.new("RGB", (w, h), tuple(int(v) for v in rng.uniform(175, 255, 3)))
    x0 = rng.uniform(2, 6) * h / 40
    step = (w - 2 * x0) / len(text)
    for k, c in enumerate(text):
        f = T.font(ff[int(rng.integers(len(ff)))], int(h * rng.uniform(0.55, 0.8)))
        glyph = Image.new("L", (h, h), 0)
        ImageDraw.Draw(glyph).text((h * 0.2, h * 0.1), c, fill=255, font=f)
        glyph = glyph.rotate(rng.uniform(-25, 25), resample=Image.BILINEAR)
        ink = Image.new("RGB", (h, h), tuple(int(v) for v in rng.uniform(0, 120, 3)))
        img.paste(ink, (int(x0 + k * step - h * 0.2 + rng.uniform(-2, 2)), int(rng.uniform(-0.15, 0.1) * h)), glyph)
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(1, 4))):
        pts = [(float(rng.uniform(0, w)), float(rng.uniform(0, h))) for _ in range(2)]
        d.line(pts, fill=tuple(int(v) for v in rng.uniform(0, 160, 3)), width=int(rng.integers(1, 3)))
    for _ in range(int(rng.integers(0, w * h // 60))):
        x, y = float(rng.uniform(0, w)), float(rng.uniform(0, h))
        d.point((x, y), fill=tuple(int(v) for v in rng.uniform(0, 255, 3)))
    a = np.asarray(img, np.float32) + rng.normal(0, rng.uniform(0, 12), (h, w, 3))
    img = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 0.8))))
    return img


def preprocess(img: Image.Image) -> np.ndarray:
    """ddddocr classification(): resize to height 64 (LANCZOS), 'L', /255, (x-0.5)/0.5 -> [1, 64, W]."""
    w, h = img.size
    g = img.resize((int(w * (64 / h)), 64), Image.LANCZOS).convert("L")
    return ((np.asarray(g, np.float32) / 255.0 - 0.5) / 0.5)[None]


def build(counts, seed, log) -> Built:
    model = model_file("ddddocr_common")
    cs = charset()
    missing = set(ALPHABET) - set(cs)
    if missing:
        raise SystemExit(f"ddddocr_common: {sorted(missing)} not in the charset")
    ff = T.fonts()
    pick = np.random.default_rng(seed)
    seen, per = set(), {}
    for split in ORDER:
        per[split] = []
        while len(per[split]) < counts[split]:
            s = "".join(pick.choice(list(ALPHABET), int(pick.integers(4, 7))))
            if s not in seen:
                seen.add(s)
                per[split].append(s)
    texts, inputs, labels, items = [], {}, {}, {}
    for split in ("calib", "search", "test"):
        labels[split] = np.arange(len(texts), len(texts) + counts[split], dtype=np.int64)
        texts += per[split]
        items[split] = per[split]
        imgs = [captcha(np.random.default_rng([seed, ORDER.index(split), i]), s, ff) for i, s in enumerate(per[split])]
        inputs[split] = {"input1": np.stack([preprocess(im) for im in imgs]).astype(np.float32)}
    doc = {
        "dataset": "ddddocr_common",
        "seed": seed,
        "output": "387",
        "steps": 20,
        "texts": texts,
        "items": items,
        "fonts": [p.name for p in ff],
        "charset": cs,
    }
    readme = f"""ddddocr_common (ddddocr 1.5.6 common.onnx, CRNN + CTC, batch fixed at 1): {split_counts(counts)}
    captcha-like images (no string in two splits), seed {seed}. Strings: 4-6 characters drawn from
    "{ALPHABET}" (lower case and digits, no look-alikes), each used once. Images are rendered with Pillow
    at a native size of 2.5:1 ({", ".join(f"{int(h * 2.5)}x{h}" for h in HEIGHTS)}): light tinted
    background, each character in one of {len(ff)} TrueType fonts at 55-80% of the height, its own dark
    colour, rotated up to 25 degrees and jittered, 1-3 stroke lines, dots, Gaussian noise, sometimes
    blur. Preprocessing as DdddOcr.classification() for the official model: resize to height 64
    keeping the aspect with Image.ANTIALIAS (LANCZOS), convert('L'), /255, (x-0.5)/0.5:
    input1 [N,1,64,160] (the model takes one sample per run). Labels are indices into labels.json
    "texts". Metric (metric.py): the output is [T, N, {len(cs)}] (time-major, 20 steps for width 160);
    greedy CTC decode as ddddocr (argmax, merge repeats, drop index 0) with the charset DdddOcr(beta=True)
    pairs with common.onnx (read from the wheel's ddddocr/__init__.py); score = exact match with the
    rendered string (case-sensitive; NaN output is a miss); agree = both decode to the same string.
    FP32 exact match on test: {{fp32}}."""
    return Built(model, inputs, labels, doc, readme, batch=1, out_axis=1)
