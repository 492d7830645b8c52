"""minilm_l6 data set of tools/realdata.py: dictionary definitions and their paraphrase partners.

Pairs: for an English noun with a single sense in WordNet 3.0 (Debian wordnet-base) and a single
[1913 Webster] definition in GCIDE (Debian dict-gcide), the Webster definition (the sample) and the
WordNet gloss (its partner): two independent, human-written definitions of one concept.
Tokenizer: BERT WordPiece (lower case, accents stripped, punctuation split, greedy longest match
with '##'), as tokenizer.json of the exported model (minilm_l6/vocab.txt) describes it.
"""

from __future__ import annotations

import collections
import gzip
import re
import unicodedata
from pathlib import Path

import numpy as np
from realdata import Built, model_file, run_model, session, split_counts

WORDNET = Path("/usr/share/wordnet")
GCIDE = Path("/usr/share/dictd")
SEQ = 64
ORDER = ("test", "search", "calib")
B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


# ------------------------------------------------------------------------------------ tokenizer
class WordPiece:
    def __init__(self, vocab_file: Path) -> None:
        self.vocab = {t: i for i, t in enumerate(vocab_file.read_text(encoding="utf-8").splitlines())}

    @staticmethod
    def _punct(ch: str) -> bool:
        cp = ord(ch)
        if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
            return True
        return unicodedata.category(ch).startswith("P")

    def basic(self, text: str) -> list[str]:
        text = "".join(" " if c.isspace() else c for c in text if ord(c) not in (0, 0xFFFD))
        text = unicodedata.normalize("NFD", text.lower())
        text = "".join(c for c in text if unicodedata.category(c) != "Mn")
        out = []
        for word in text.split():
            cur = ""
            for c in word:
                if self._punct(c):
                    out += [cur] if cur else []
                    out.append(c)
                    cur = ""
                else:
                    cur += c
            out += [cur] if cur else []
        return out

    def ids(self, text: str) -> list[int]:
        out = [self.vocab["[CLS]"]]
        for word in self.basic(text):
            start, pieces = 0, []
            while start < len(word):
                end = len(word)
                while end > start:
                    piece = ("##" if start else "") + word[start:end]
                    if piece in self.vocab:
                        break
                    end -= 1
                if end == start:
                    pieces = [self.vocab["[UNK]"]]
                    break
                pieces.append(self.vocab[piece])
                start = end
            out += pieces
        return out + [self.vocab["[SEP]"]]

    def batch(self, texts: list[str]) -> dict[str, np.ndarray]:
        ids = np.zeros((len(texts), SEQ), np.int64)  # [PAD] = 0
        mask = np.zeros((len(texts), SEQ), np.int64)
        for i, t in enumerate(texts):
            x = self.ids(t)
            ids[i, : len(x)] = x
            mask[i, : len(x)] = 1
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


# -------------------------------------------------------------------------------------- pairs
def _b64(s: str) -> int:
    v = 0
    for c in s:
        v = v * 64 + B64.index(c)
    return v


def _clean(d: str) -> str | None:
    d = " ".join(d.split())
    d = re.sub(r"^[^\[\]]*\]\s*", "", d)  # tail of an etymology: "... Ragusa.] A large ship"
    d = re.sub(r"^\((\w+\.\s*)+\)\s*", "", d)  # domain label: "(Zool.) "
    d = re.sub(r"\s*--\s*[A-Z][\w. ]*\.?$", "", d)  # citation: "--Tennyson."
    bad = ("{", "}", "[", "]", "(a)", "See ", "Same as", "Cf.", "q. v.", "pl.", "<", ">", "\\", "|")
    if any(b in d for b in bad) or not d.isascii() or not (4 <= len(d.split()) <= 40):
        return None
    return d


def pairs() -> list[tuple[str, str, str]]:
    """(headword, Webster 1913 definition, WordNet 3.0 gloss), sorted by headword."""
    idx, dz = GCIDE / "gcide.index", GCIDE / "gcide.dict.dz"
    if not (WORDNET / "index.noun").exists() or not idx.exists():
        raise SystemExit("minilm_l6 needs WordNet and GCIDE: apt-get install wordnet-base dict-gcide")
    data = gzip.open(dz).read()  # dictzip is gzip
    entries = collections.defaultdict(list)
    for line in idx.read_text(encoding="utf-8", errors="replace").splitlines():
        w, o, n = line.split("\t")
        entries[w.lower()].append((_b64(o), _b64(n)))
    mono = {}
    for line in (WORDNET / "index.noun").read_text().splitlines():
        p = line.split()
        if not line.startswith(" ") and int(p[2]) == 1 and p[0].isalpha() and p[0].islower():
            mono[p[0]] = int(p[-1])
    for pos in ("verb", "adj", "adv"):  # one sense in all of WordNet, not only among nouns
        for line in (WORDNET / f"index.{pos}").read_text().splitlines():
            if not line.startswith(" "):
                mono.pop(line.split()[0], None)
    out = []
    with open(WORDNET / "data.noun", "rb") as noun:
        for lemma, off in sorted(mono.items()):
            es = entries.get(lemma)
            if not es or len(es) != 1:
                continue
            e = data[es[0][0] : es[0][0] + es[0][1]].decode("utf-8", "replace")
            head, _, body = e.partition("\n")
            m = re.match(r"\s*(.*?)\s*\[1913 Webster\]", body, re.S)
            if not re.search(r",\s*n\.", head) or re.search(r"\b2\.", e) or not m:
                continue
            d = _clean(m.group(1))
            noun.seek(off)
            g = noun.readline().decode("utf-8").split("| ", 1)[1].strip()
            g = re.split(r';\s*"', g)[0].strip().rstrip(";").strip()
            if d and len(g.split()) >= 4 and g.isascii() and d.lower().rstrip(".") != g.lower():
                out.append((lemma, d, g))
    return out


def pooled(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """sentence-transformers mean pooling over the attention mask, then L2 normalisation."""
    m = mask[..., None].astype(np.float64)
    e = (hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)


def build(counts, seed, log) -> Built:
    model = model_file("minilm_l6")
    tok = WordPiece(model.parent / "vocab.txt")
    allp = [p for p in pairs() if len(tok.ids(p[1])) <= SEQ and len(tok.ids(p[2])) <= SEQ]
    order = np.random.default_rng(seed).permutation(len(allp))
    if sum(counts.values()) > len(allp):
        raise SystemExit(f"minilm_l6: {sum(counts.values())} samples asked, {len(allp)} pairs available")
    take, at = {}, 0
    for split in ORDER:
        take[split] = [allp[i] for i in order[at : at + counts[split]]]
        at += counts[split]
    rows = [p for split in ("calib", "search", "test") for p in take[split]]
    inputs, labels, items, at = {}, {}, {}, 0
    for split in ("calib", "search", "test"):
        inputs[split] = tok.batch([d for _, d, _ in take[split]])
        labels[split] = np.arange(at, at + counts[split], dtype=np.int64)
        items[split] = [w for w, _, _ in take[split]]
        at += counts[split]
    sess = session(model, threads=1)  # one thread: the gallery's bytes do not depend on the core count
    part = tok.batch([g for _, _, g in rows])
    gallery = pooled(run_model(sess, part, 32)["last_hidden_state"], part["attention_mask"]).astype(np.float32)
    doc = {
        "dataset": "minilm_l6",
        "seed": seed,
        "seq_len": SEQ,
        "output": "last_hidden_state",
        "headwords": [w for w, _, _ in rows],
        "sentences": [d for _, d, _ in rows],
        "partners": [g for _, _, g in rows],
        "lengths": [int(sum(1 for _ in tok.ids(d))) for _, d, _ in rows],
        "gallery": "gallery.npy",
        "items": items,
        "sources": ["GCIDE 0.48 [1913 Webster] (Debian dict-gcide)", "WordNet 3.0 glosses (Debian wordnet-base)"],
    }
    readme = f"""minilm_l6 (sentence-transformers all-MiniLM-L6-v2, exported by HuggingFace Optimum):
    {split_counts(counts)} real English sentence pairs (no headword in two splits), seed {seed}, drawn from
    {len(allp)} pairs made as follows: for each English noun with a single sense in WordNet 3.0 (Debian
    wordnet-base) and one single-sense noun entry in GCIDE (Debian dict-gcide), the [1913 Webster]
    definition is the sample (e.g. "A stick used as a handle of a broom.") and the WordNet gloss its
    paraphrase partner ("the handle of a broom"): two independent human-written definitions of one
    concept. Inputs as the exported model's tokenizer.json: BERT WordPiece with minilm_l6/vocab.txt
    (lower case, accents stripped, punctuation split), [CLS] ... [SEP], padded with 0 to a fixed
    {SEQ} tokens (no pair is longer): input_ids, attention_mask (1 on real tokens), token_type_ids (0),
    int64 [N,{SEQ}] (the model's input type, not float32). gallery.npy holds the FP32 embeddings
    (mean pooling over the attention mask, L2 normalised, as sentence-transformers; ONNX Runtime CPU,
    one thread) of the partners of all {sum(counts.values())} pairs, in labels.json order; labels are
    row indices into it. Metric (metric.py): score = 1 when the sample's pooled embedding (mask from
    labels.json "lengths") has its own partner as nearest gallery row by cosine, else 0 (NaN output is
    a miss); agree = cosine of the two pooled embeddings >= 0.99, pooling over all {SEQ} positions
    since agree() gets no labels to rebuild the mask. FP32 top-1 retrieval on test: {{fp32}}."""
    return Built(model, inputs, labels, doc, readme, batch=32, files={"gallery.npy": gallery})
