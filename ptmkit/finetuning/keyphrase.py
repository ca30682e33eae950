"""Keyphrase extraction (`--task keyphrase`) as BIO tagging of a document's words.

Data: a zip in the layout of the Inspec / SemEval-2010 / SemEval-2017 archives
(`<Name>/docsutf8/<id>.txt` + `<Name>/keys/<id>.key`, one gold phrase a line; the `<Name>/`
folder may also be absent), read directly from the zip. Documents without a key file (or with an
empty one) can be neither trained on nor scored and are skipped, with a warning.

Splits: these archives ship no train/test split, so ptmkit makes a fixed one: a document is dev
when the CRC-32 of its id is divisible by DEV_EVERY (one in five, independent of --seed, so every
run and every objective is scored on the same documents). `ZIP:train`, `ZIP:dev` and `ZIP:all`
(= plain `ZIP`) name the parts. `--train ZIP` without `--dev` (or with `--dev ZIP` or
`--dev ZIP:dev`) trains on `ZIP:train` and selects the epoch on `ZIP:dev`; a --dev part that
shares documents with the --train part of the same zip is refused. `ptmkit evaluate --data
ZIP:dev` re-scores that dev part, `--data ZIP` scores every document.

Words are nltk's `wordpunct_tokenize` tokens; a word matches a gold word when both are equal after
lowercasing and Porter stemming (nltk's PorterStemmer). Every occurrence of a gold phrase is
labelled B/I (longer phrases first, never overlapping one already labelled).

Length: documents are cut to `max_length` sub-words for training and prediction alike (no
sliding windows). With a 2000-id BPE a SemEval-2017 abstract is ~450 sub-words (median), so
the default 128 sees about its first quarter and `--max-length 512` two thirds of the documents
whole; SemEval-2010 full papers are far longer and only their beginning is ever seen. Gold
phrases are all scored, also those only in the cut-off text, so truncation lowers recall
rather than flattering the score.

Prediction: the decoded B/I spans, ranked by the mean probability of their words' predicted
tags, deduplicated after stemming. Metrics: the mean over documents of F1 between the top k
stemmed phrases and the stemmed gold set (exact match), for k = 5, 10 and M (all predicted). A
document with fewer than k predictions counts the missing ones as wrong (Chan et al., 2019),
so F1@5 charges a model that predicts too little and F1@M one that predicts too much. Gold
phrases absent from the text stay in the gold set, as in the published benchmark numbers.
The epoch is selected on F1@M, the score of exactly what the tagger predicts.
"""

from __future__ import annotations

import functools
import re
import warnings
import zipfile
import zlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from nltk.stem import PorterStemmer
from nltk.tokenize import wordpunct_tokenize

from ptmkit.errors import UserError
from ptmkit.finetuning.tagging import OUTSIDE, Tag, TokenLogits, repair_iob2, word_probabilities
from ptmkit.finetuning.tasks import Encoded

BEGIN, INSIDE = "B-KP", "I-KP"
SPLITS = ("train", "dev", "all")
DEV_EVERY = 5
DOC_MEMBER = re.compile(r"^((?:.*/)?)docsutf8/([^/]+)\.txt$")
KEY_MEMBER = re.compile(r"^((?:.*/)?)keys/([^/]+)\.key$")
K_VALUES = (5, 10, None)
"""F1@5, F1@10 and F1@M."""


@dataclass(frozen=True)
class DocTarget:
    """What scoring a document needs: its stemmed words (to spell predicted spans) and the gold."""

    stems: tuple[str, ...]
    gold: tuple[str, ...]


# ---- words and phrases ------------------------------------------------------------------------
_PORTER = PorterStemmer()


@functools.lru_cache(maxsize=None)
def stem(word: str) -> str:
    """Lowercased Porter stem; cached, since documents repeat their words."""
    return _PORTER.stem(word.lower())


def words_of(text: str) -> list[str]:
    """Runs of word characters and runs of punctuation (so "state-of-the-art" is 7 words)."""
    return wordpunct_tokenize(text)


def stemmed(text: str) -> tuple[str, ...]:
    return tuple(stem(w) for w in words_of(text))


def bio_tags(stems: list[str], phrases: list[tuple[str, ...]]) -> list[str]:
    """B/I over every occurrence of a gold phrase (longest first, no overlaps), O elsewhere."""
    tags = [OUTSIDE] * len(stems)
    starts: dict[str, list[int]] = defaultdict(list)
    for i, word in enumerate(stems):
        starts[word].append(i)
    for phrase in sorted(set(phrases), key=len, reverse=True):
        for i in starts.get(phrase[0], []):
            j = i + len(phrase)
            if tuple(stems[i:j]) == phrase and all(t == OUTSIDE for t in tags[i:j]):
                tags[i:j] = [BEGIN] + [INSIDE] * (len(phrase) - 1)
    return tags


# ---- reading ----------------------------------------------------------------------------------
def split_path(path: str) -> tuple[str, str]:
    """`ZIP:dev` -> (ZIP, "dev"); a plain `ZIP` is every document."""
    base, sep, split = path.rpartition(":")
    return (base, split) if sep and split in SPLITS else (path, "all")


def _same_file(a: str, b: str) -> bool:
    return Path(a).resolve() == Path(b).resolve()


def in_split(doc_id: str, split: str) -> bool:
    if split == "all":
        return True
    return (zlib.crc32(doc_id.encode("utf-8")) % DEV_EVERY == 0) == (split == "dev")


def read_zip(path: str | Path) -> list[tuple[str, str, list[str]]]:
    """(id, text, gold phrases) of every document with keys in a docsutf8/ + keys/ zip."""
    path = Path(path)
    if not path.is_file():
        raise UserError("data file not found", str(path), "check the path")
    if not zipfile.is_zipfile(path):
        raise UserError("not a zip archive", str(path), "pass the keyphrase zip (e.g. SemEval2017.zip)")
    with zipfile.ZipFile(path) as archive:
        docs = _members(archive, DOC_MEMBER)
        keys = _members(archive, KEY_MEMBER)
        if not docs:
            raise UserError("no docsutf8/*.txt documents in the zip", str(path),
                            "use the Inspec / SemEval layout: docsutf8/<id>.txt and keys/<id>.key")
        out = []
        for doc_id in sorted(docs):
            phrases = _phrases(archive.read(keys[doc_id])) if doc_id in keys else []
            if phrases:
                out.append((doc_id, _text(archive.read(docs[doc_id])), phrases))
    if len(out) < len(docs):
        warnings.warn(f"{path}: {len(docs) - len(out)} of {len(docs)} documents have no keys; skipped",
                      stacklevel=2)
    if not out:
        raise UserError("no document has gold keyphrases", str(path), "check the keys/ folder")
    return out


def _members(archive: zipfile.ZipFile, pattern: re.Pattern) -> dict[str, str]:
    """Document id (its folder, minus docsutf8/ or keys/, and file stem) -> member name."""
    found = {}
    for name in archive.namelist():
        match = pattern.match(name)
        if match:
            found[match.group(1) + match.group(2)] = name
    return found


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def _phrases(data: bytes) -> list[str]:
    """One phrase a line; Inspec wraps long phrases with tabs, so whitespace runs are one space."""
    return [" ".join(line.split()) for line in _text(data).splitlines() if line.strip()]


# ---- the task ---------------------------------------------------------------------------------
class Keyphrase(Tag):
    """Keyphrase extraction from a docsutf8/ + keys/ zip; see the module docstring for splits."""

    name = "keyphrase"
    main_metric = "f1@M"

    def resolve_files(self, train: str, devs: list[str]) -> tuple[str, list[str]]:
        """The whole zip to train on, with no --dev or with its own dev part (or itself) as
        --dev, means its fixed split; any other dev part of the training zip that shares
        documents with the training part is refused (its scores would be inflated)."""
        zip_path, part = split_path(train)
        same_zip = [_same_file(split_path(dev)[0], zip_path) for dev in devs]
        if part == "all" and all(same_zip) and all(split_path(dev)[1] in ("all", "dev") for dev in devs):
            return f"{zip_path}:train", [f"{zip_path}:dev"]
        for dev, same in zip(devs, same_zip):
            dev_part = split_path(dev)[1]
            if same and (dev_part == part or "all" in (dev_part, part)):
                raise UserError(f"--dev {dev} shares documents with --train {train}", dev,
                                f"train on {zip_path}:train and select on {zip_path}:dev "
                                f"(or pass --train {zip_path} alone)")
        return train, devs

    def read(self, path: str) -> list[dict[str, Any]]:
        zip_path, split = split_path(path)
        records = [_record(doc_id, text, phrases)
                   for doc_id, text, phrases in read_zip(zip_path) if in_split(doc_id, split)]
        if not records:
            raise UserError(f"no documents in the {split} part", path, "use ZIP:all or a bigger archive")
        return records

    def fit_labels(self, records: list[dict[str, Any]]) -> None:
        if not self.spec.labels:
            self.spec.labels = [OUTSIDE, BEGIN, INSIDE]

    def encode(self, records: list[dict[str, Any]], path: str) -> list[Encoded]:
        """Tagging items whose `target` is the document's DocTarget (a 0-d object array)."""
        items = self.encode_words([r["words"] for r in records], self.targets(records, path))
        for item, record in zip(items, records):
            item["target"] = np.asarray(DocTarget(record["stems"], record["gold"]), dtype=object)
        return items

    def predict(self, output: TokenLogits) -> list[list[tuple[int, int, float]]]:
        """Per document: (first word, last word, confidence) of every predicted span."""
        from seqeval.metrics.sequence_labeling import get_entities
        out = []
        for table in word_probabilities(output, self.spec.labels.index(OUTSIDE)):
            best = table.argmax(-1)
            tags = repair_iob2([self.spec.labels[i] for i in best])
            out.append([(start, end, float(table[np.arange(start, end + 1), best[start:end + 1]].mean()))
                        for _, start, end in get_entities(tags)])
        return out

    def metrics(self, predictions: list[list[tuple[int, int, float]]],
                targets: list[DocTarget]) -> dict[str, float]:
        ranked = [rank_phrases(spans, target.stems) for spans, target in zip(predictions, targets)]
        gold = [list(target.gold) for target in targets]
        return {f"f1@{k or 'M'}": f1_at(ranked, gold, k) for k in K_VALUES}


def _record(doc_id: str, text: str, phrases: list[str]) -> dict[str, Any]:
    words = words_of(text)
    stems = tuple(stem(w) for w in words)
    gold = [p for p in dict.fromkeys(stemmed(phrase) for phrase in phrases) if p]
    return {"id": doc_id, "words": words, "tags": bio_tags(list(stems), gold), "stems": stems,
            "gold": tuple(" ".join(p) for p in gold)}


def rank_phrases(spans: list[tuple[int, int, float]], stems: tuple[str, ...]) -> list[str]:
    """Stemmed phrases of the spans, most confident first, each phrase once."""
    ordered = sorted(spans, key=lambda span: -span[2])
    return list(dict.fromkeys(" ".join(stems[start:end + 1]) for start, end, _ in ordered))


def f1_at(ranked: list[list[str]], gold: list[list[str]], k: int | None) -> float:
    """Mean per-document F1 of the top k phrases (all when k is None) against the gold set;
    missing predictions up to k count as wrong ones."""
    from sklearn.metrics import f1_score
    from sklearn.preprocessing import MultiLabelBinarizer
    if k is not None:
        ranked = [r[:k] + [f"\0missing {i}" for i in range(k - len(r[:k]))] for r in ranked]
    binarizer = MultiLabelBinarizer(sparse_output=True).fit(ranked + gold)
    return float(f1_score(binarizer.transform(gold), binarizer.transform(ranked),
                          average="samples", zero_division=0))
