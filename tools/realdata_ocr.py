"""PP-OCR data sets of tools/realdata.py: ppocrv4_rec, ppocrv4_det, ppocr_cls.

Preprocessing follows rapidocr_onnxruntime 1.3.24 (the wheel the corpus models come from):
images are cv2-style BGR; TextRecognizer / TextClassifier.resize_norm_img resize a line to height
48 keeping its aspect (cv2.resize INTER_LINEAR, width capped at 320 / 192), (x/255-0.5)/0.5, CHW,
zero padded on the right; DetPreProcess: x/255, (x - ImageNet mean)/std in BGR order, CHW.
"""

from __future__ import annotations

import numpy as np
import realdata_text as T
from realdata import Built, model_file, split_counts

ORDER = ("test", "search", "calib")  # drawn in this order: test stays the same when the other counts change


def _sources_note() -> str:
    names = [n for n, _ in T.sources()]
    lic = sorted({n.rsplit("/", 1)[-1] for n in names if n.startswith("/")})
    return (f"licence texts in /usr/share/common-licenses ({', '.join(lic)}) and " if lic else "") + names[-1]


def _style_rng(seed: int, split: str, i: int, attempt: int) -> np.random.Generator:
    return np.random.default_rng([seed, ORDER.index(split), i, attempt])


def _lines(counts, seed, fit, numeric_share=0.15):
    """Per split: (texts, images) of rendered lines; ``fit(img)`` rejects a rendering (too wide)."""
    ff = T.fonts()
    stream = T.text_stream(np.random.default_rng(seed), numeric_share)
    got = {}
    for split in ORDER:
        texts, imgs = [], []
        for i in range(counts[split]):
            attempt = 0
            while True:
                txt = next(stream)
                img = T.render_line(_style_rng(seed, split, i, attempt), txt, ff)
                attempt += 1
                if fit(img):
                    break
            texts.append(txt)
            imgs.append(img)
        got[split] = (texts, imgs)
    return got, ff


# ---------------------------------------------------------------------------------- ppocrv4_rec
def rec_classes(model) -> list[str]:
    """CTC classes as RapidOCR's CTCLabelDecode builds them: blank, metadata "character" lines, ' '."""
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(model), load_external_data=False).metadata_props}
    return ["<blank>", *meta["character"].splitlines(), " "]


def build_rec(counts, seed, log) -> Built:
    from realdata import session

    model = model_file("ppocrv4_rec")
    classes = rec_classes(model)
    out = session(model).get_outputs()[0]
    if out.shape[-1] != len(classes):
        raise SystemExit(f"ppocrv4_rec: {len(classes)} CTC classes but the output's last dim is {out.shape[-1]}")
    got, ff = _lines(counts, seed, lambda img: T.line_width(img, 48) <= 320)
    missing = set("".join(t for split in got.values() for t in split[0])) - set(classes)
    if missing:
        raise SystemExit(f"ppocrv4_rec: characters {sorted(missing)} not in the model's charset")
    texts, inputs, labels, items = [], {}, {}, {}
    for split in ("calib", "search", "test"):
        t, imgs = got[split]
        labels[split] = np.arange(len(texts), len(texts) + len(t), dtype=np.int64)
        texts += t
        items[split] = t
        inputs[split] = {"x": np.stack([T.norm_line(im[..., ::-1], 48, 320) for im in imgs])}
    src = _sources_note()
    doc = {
        "dataset": "ppocrv4_rec",
        "seed": seed,
        "output": out.name,
        "texts": texts,
        "items": items,
        "fonts": [p.name for p in ff],
        "sources": [n for n, _ in T.sources()],
        "ctc_classes": classes,
    }
    readme = f"""ppocrv4_rec (PP-OCRv4 text recognizer, rapidocr_onnxruntime 1.3.24): single text lines of
    real English text, {split_counts(counts)} samples (no string in two splits), seed {seed}. Text:
    phrases of 2-5 consecutive words from {src}, plus ~15% numbers and dates formatted from the seeded
    generator; each string is used once. Each line is rendered with Pillow (BASIC layout) in one of
    {len(ff)} TrueType fonts ({", ".join(p.stem for p in ff)}) at 22-40 px, dark ink on a light tinted
    background with a gradient, Gaussian noise, sometimes blur and JPEG, cropped with a small margin
    like a detector's crop; lines whose resized width would exceed 320 are skipped. Preprocessing as
    RapidOCR's TextRecognizer: BGR, resize to height 48 keeping the aspect (cv2 INTER_LINEAR
    equivalent), (x/255-0.5)/0.5, CHW, zero padded on the right to width 320: x [N,3,48,320].
    Labels are indices into labels.json "texts". Metric (metric.py): greedy CTC decode of the softmax
    output (classes: blank, the model's metadata "character" list, then ' ', as RapidOCR's
    CTCLabelDecode; {len(classes)} = the output's last dim), score = exact match with the rendered
    string (case-sensitive, stripped; a NaN output is a miss); agree = both decode to the same string.
    FP32 exact match on test: {{fp32}}."""
    return Built(model, inputs, labels, doc, readme)


# ------------------------------------------------------------------------------------ ppocr_cls
def build_cls(counts, seed, log) -> Built:
    model = model_file("ppocr_cls")
    got, ff = _lines(counts, seed, lambda img: T.line_width(img, 48) <= 384)
    texts, inputs, labels, items = [], {}, {}, {}
    for split in ("calib", "search", "test"):
        t, imgs = got[split]
        n = len(t)
        turned = np.random.default_rng([seed, 100 + ORDER.index(split)]).permutation(np.arange(n) % 2)
        turned = turned.astype(np.int64)
        imgs = [im[::-1, ::-1] if r else im for im, r in zip(imgs, turned)]  # cv2.rotate(img, ROTATE_180)
        labels[split] = turned
        texts += t
        items[split] = t
        inputs[split] = {"x": np.stack([T.norm_line(im[..., ::-1], 48, 192) for im in imgs])}
    doc = {
        "dataset": "ppocr_cls",
        "seed": seed,
        "classes": ["0", "180"],
        "texts": texts,
        "items": items,
        "fonts": [p.name for p in ff],
        "sources": [n for n, _ in T.sources()],
    }
    readme = f"""ppocr_cls (PP-OCR mobile v2.0 text direction classifier, rapidocr_onnxruntime 1.3.24): single
    text lines of real English text, {split_counts(counts)} samples (no string in two splits), seed {seed},
    half of each split (a seeded permutation) turned by 180 degrees. Text and rendering as the
    ppocrv4_rec set: phrases of 2-5 consecutive words from {_sources_note()}, plus ~15% numbers and
    dates; {len(ff)} TrueType fonts at 22-40 px, dark ink on light tinted backgrounds, noise, blur, JPEG;
    lines up to 8x as wide as high (wider ones are skipped; those wider than 4x are squeezed to 192 as
    RapidOCR does). Preprocessing as RapidOCR's TextClassifier: BGR, resize to height 48 keeping the
    aspect with the width capped at 192 (cv2 INTER_LINEAR equivalent), (x/255-0.5)/0.5, CHW, zero
    padded to 192: x [N,3,48,192]. Labels are class ids (0 = upright, 1 = turned 180 degrees, the
    model's label_list ['0', '180']), so plain --labels top-1 accuracy works too. Metric (metric.py):
    score = argmax of the 2-way output == label (NaN output is a miss); agree = argmax equal.
    FP32 accuracy on test: {{fp32}}."""
    return Built(model, inputs, labels, doc, readme)
