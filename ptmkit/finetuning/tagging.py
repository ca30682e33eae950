"""Sequence labelling (`--task tag`): BIO / IOB2 tags from CoNLL-style files, scored by seqeval.

Files: one token per line, the token in the first column and its tag in the last (tab- or
space-separated, so NCBI-disease's 4 tab columns and CoNLL-2003's 4 space columns both read);
blank lines end a sentence and `-DOCSTART-` lines are skipped; `--text-fields` and
`--label-field` do not apply to them. Or a table with one sentence per row, its words and tags
as lists: a Hugging Face dataset (Parquet, Arrow, save_to_disk; tag ids named by its ClassLabel)
or JSON lines, the columns `tokens` and `ner_tags` unless `--text-fields` / `--label-field` name
others.

Words become sub-words with the word's label on its first piece and -100 (the cross-entropy
ignore index) on the continuation pieces, as in BERT's NER recipe, so every word is trained and
scored exactly once whatever the tokenizer. Sentences longer than `max_length` sub-words are
cut; the words cut off are predicted `O` while their gold tags are still scored, so truncation
costs recall instead of silently shrinking the test set.

Tags are repaired to IOB2 (an `I-X` that does not continue an `X` entity becomes `B-X`), for
gold files in IOB1 and for predictions alike; entity-level precision, recall and F1 come from
seqeval (its default, conlleval-compatible mode).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch.nn.functional as F
from torch import Tensor, nn

from ptmkit.data import hf_datasets
from ptmkit.errors import UserError
from ptmkit.finetuning.data import _open, read_records, record_where, require_fields
from ptmkit.finetuning.tasks import Encoded, Task, TaskSpec, label_ids, pad_batch

Sentence = dict[str, Any]
"""{"words": [...], "tags": [...]}, one per sentence (a document for keyphrases)."""

OUTSIDE = "O"
IGNORE = -100
"""Label of positions that carry no word's label: specials, continuation pieces, padding."""
DOCSTART = "-DOCSTART-"


# ---- reading ----------------------------------------------------------------------------------
def read_conll(path: str | Path) -> list[Sentence]:
    """Sentences of a CoNLL-style file; a malformed line is named by its number."""
    path = Path(path)
    if not path.is_file():
        raise UserError("data file not found", str(path), "check the path")
    sentences: list[Sentence] = []
    words: list[str] = []
    tags: list[str] = []
    with _open(path) as f:
        for number, line in enumerate(f, 1):
            columns = line.rstrip("\r\n").split("\t") if "\t" in line else line.split()
            if not line.strip() or columns[0] == DOCSTART:
                if words:
                    sentences.append({"words": words, "tags": repair_iob2(tags)})
                words, tags = [], []
                continue
            if not columns[0].strip():  # a token of whitespace only (a no-break space): no text to tag
                continue
            words.append(columns[0].strip())
            tags.append(_tag(columns, f"{path}:{number}"))
    if words:
        sentences.append({"words": words, "tags": repair_iob2(tags)})
    if not sentences:
        raise UserError("no sentences in the file", str(path), "check that the file is not empty")
    return sentences


def _tag(columns: list[str], where: str) -> str:
    if len(columns) < 2:
        raise UserError("a token line needs the token and its tag", where,
                        "write `token<TAB>...<TAB>tag` (the tag is the last column)")
    return _bio(columns[-1].strip(), where)


def _bio(tag: object, where: str) -> str:
    if isinstance(tag, int):
        raise UserError(f"tag {tag!r} is a number with no name", where,
                        "store tags as strings, or as a `datasets` ClassLabel that names them")
    if tag != OUTSIDE and str(tag)[:2] not in ("B-", "I-"):
        raise UserError(f"tag {tag!r} is not BIO", where, "use O, B-<type> and I-<type> tags (IOB2)")
    return str(tag)


ROW_FIELDS = ("tokens", "ner_tags")
"""The words and tags columns of a table of sentences unless named (conll2003, wnut_17 and
ncbi_disease on the Hugging Face Hub all use these)."""


def read_tagged_rows(path: str | Path, words_field: str, tags_field: str) -> list[Sentence]:
    """Sentences of a table holding a list of words and a list of tags per row: a Hugging Face
    dataset (tag names from its ClassLabel) or JSON lines."""
    records = read_records(path)
    require_fields(records, [words_field, tags_field], path, "--text-fields / --label-field")
    sentences = []
    for index, record in enumerate(records):
        where = record_where(path, records, index)
        words, tags = record[words_field], record[tags_field]
        if not isinstance(words, list) or not isinstance(tags, list) or len(words) != len(tags):
            raise UserError(f"{words_field!r} and {tags_field!r} must be lists of the same length", where,
                            "store one word and one tag per position")
        if words:
            sentences.append({"words": [str(word) for word in words],
                              "tags": repair_iob2([_bio(tag, where) for tag in tags])})
    return sentences


def repair_iob2(tags: list[str]) -> list[str]:
    """Turn every `I-X` that does not continue an `X` entity into `B-X` (IOB1 -> IOB2)."""
    out: list[str] = []
    for tag in tags:
        previous = out[-1] if out else OUTSIDE
        if tag.startswith("I-") and previous[2:] != tag[2:]:
            tag = "B-" + tag[2:]
        out.append(tag)
    return out


# ---- sub-word alignment -----------------------------------------------------------------------
def word_numbers(word_ids: list[int | None]) -> list[int]:
    """Per sub-word: 1 + the word index on a word's first piece, 0 on the others and on specials
    (0 is also what padding gets, so the field pads like any other)."""
    out, previous = [], None
    for word in word_ids:
        out.append(0 if word is None or word == previous else word + 1)
        previous = word
    return out


def align_labels(word_ids: list[int | None], labels: list[int]) -> list[int]:
    """Per sub-word: the word's label on its first piece, IGNORE on the continuation pieces."""
    return [labels[n - 1] if n else IGNORE for n in word_numbers(word_ids)]


class TokenLogits(NamedTuple):
    """What the tagging head outputs: scores per sub-word, and which word each first piece starts."""

    logits: Tensor
    """(B, L, labels)"""
    word_number: Tensor
    """(B, L): 1 + word index on first pieces, 0 elsewhere."""


def word_probabilities(output: TokenLogits, outside: int) -> list[np.ndarray]:
    """Per sequence, (words, labels) probabilities read at each word's first piece.

    A word without pieces (a character the tokenizer drops) gets certainty of `outside`; words
    after the last kept one are absent (they were truncated).
    """
    probs = output.logits.float().softmax(-1).cpu().numpy()
    numbers = output.word_number.cpu().numpy()
    out = []
    for row, number in zip(probs, numbers):
        table = np.zeros((int(number.max(initial=0)), row.shape[-1]), dtype=np.float32)
        table[:, outside] = 1.0
        table[number[number > 0] - 1] = row[number > 0]
        out.append(table)
    return out


# ---- the task ---------------------------------------------------------------------------------
class TokenHead(nn.Module):
    """A linear classifier on every token's features (BERT's token classification head)."""

    def __init__(self, hidden: int, outputs: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, outputs)

    def forward(self, features: Tensor) -> Tensor:
        return self.out(self.drop(features))


class Tag(Task):
    """BIO sequence labelling from CoNLL files or tables of sentences (module docstring);
    metrics from seqeval."""

    name = "tag"
    main_metric = "f1"

    def read(self, path: str) -> list[Sentence]:
        """CoNLL text, or a table of sentences (a dataset, JSON lines) with their words in
        --text-fields and tags in --label-field (default `tokens` and `ner_tags`)."""
        rows = Path(path).name.removesuffix(".gz").endswith((".jsonl", ".json"))
        if not (rows or hf_datasets.is_dataset(Path(path))):
            return read_conll(path)
        default = TaskSpec(name=self.spec.name)
        words = self.spec.text_fields[0] if self.spec.text_fields != default.text_fields else ROW_FIELDS[0]
        tags = self.spec.label_field if self.spec.label_field != default.label_field else ROW_FIELDS[1]
        return read_tagged_rows(path, words, tags)

    def min_length(self) -> tuple[int, str]:
        """One sub-word between the specials; less would train on nothing (a NaN loss)."""
        return 3, "[CLS] word [SEP]"

    def fit_labels(self, records: list[Sentence]) -> None:
        """O first (id 0), then the entity tags sorted by type, B before I. A type's B and I
        both, even when the training data has one only (single-word entities: no I-), so that
        a dev entity of two words is scored, not refused as an unseen tag."""
        if not self.spec.labels:
            tags = {t for r in records for t in r["tags"]} - {OUTSIDE}
            tags |= {f"{prefix}-{t[2:]}" for t in tags if t[:2] in ("B-", "I-") for prefix in "BI"}
            self.spec.labels = [OUTSIDE] + sorted(tags, key=lambda t: (t[2:], t[:2]))

    def targets(self, records: list[Sentence], path: str) -> list[list[int]]:
        flat = label_ids([t for r in records for t in r["tags"]], self.spec.labels, f"{path}: tags")
        bounds = np.cumsum([0] + [len(r["tags"]) for r in records])
        return [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

    def encode(self, records: list[Sentence], path: str) -> list[Encoded]:
        """Sub-word items with aligned `labels`; `target` keeps every word's gold tag id."""
        targets = self.targets(records, path)
        items = self.encode_words([r["words"] for r in records], targets)
        for item, target in zip(items, targets):
            item["target"] = np.asarray(target, dtype=np.int64)
        return items

    def encode_words(self, sentences: list[list[str]], labels: list[list[int]]) -> list[Encoded]:
        """[CLS] pieces [SEP], cut to max_length, with `labels` and `word_number` per sub-word."""
        special = self.tokenizer.special
        encodings = self.tokenizer.hf.encode_batch(sentences, is_pretokenized=True, add_special_tokens=False)
        budget = max(self.spec.max_length - 2, 0)  # a negative slice end would keep the tail
        items = []
        for encoding, sentence_labels in zip(encodings, labels):
            ids, words = encoding.ids[:budget], encoding.word_ids[:budget]
            items.append({
                "input_ids": np.array([special.cls, *ids, special.sep], dtype=np.int64),
                "labels": np.array([IGNORE, *align_labels(words, sentence_labels), IGNORE], dtype=np.int64),
                "word_number": np.array([0, *word_numbers(words), 0], dtype=np.int64),
            })
        return items

    def collate(self, items: list[Encoded]) -> dict[str, Tensor]:
        """The word-level `target` is for scoring only (and may be longer than a cut sequence)."""
        return pad_batch([{k: v for k, v in item.items() if k != "target"} for item in items],
                         self.tokenizer.special.pad)

    def build_head(self, hidden: int) -> nn.Module:
        return TokenHead(hidden, len(self.spec.labels))

    def head_output(self, features: Tensor, batch: dict[str, Tensor], head: nn.Module) -> TokenLogits:
        return TokenLogits(head(features), batch["word_number"])

    def loss(self, output: TokenLogits, batch: dict[str, Tensor]) -> Tensor:
        logits = output.logits.float()
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["labels"].reshape(-1),
                               ignore_index=IGNORE)

    def predict(self, output: TokenLogits) -> list[list[int]]:
        outside = self.spec.labels.index(OUTSIDE)
        return [table.argmax(-1).tolist() for table in word_probabilities(output, outside)]

    def decode(self, ids: list[int], n_words: int) -> list[str]:
        """Word-level IOB2 tags of a prediction; words cut off by max_length are `O`."""
        tags = [self.spec.labels[i] for i in ids[:n_words]]
        return repair_iob2(tags + [OUTSIDE] * (n_words - len(tags)))

    def metrics(self, predictions: list[list[int]], targets: list[list[int]]) -> dict[str, float]:
        from seqeval.metrics import accuracy_score, f1_score, precision_score, recall_score
        gold = [[self.spec.labels[i] for i in t] for t in targets]
        predicted = [self.decode(p, len(t)) for p, t in zip(predictions, targets)]
        result = {"f1": f1_score(gold, predicted, zero_division=0),
                  "precision": precision_score(gold, predicted, zero_division=0),
                  "recall": recall_score(gold, predicted, zero_division=0),
                  "accuracy": accuracy_score(gold, predicted)}
        return {k: float(v) for k, v in result.items()}
