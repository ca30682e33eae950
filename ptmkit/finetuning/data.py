"""Labelled data for fine-tuning: table readers, the GLUE layouts, and label budgets."""

from __future__ import annotations

import csv
import gzip
import io
import json
import sys
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ptmkit.data import hf_datasets
from ptmkit.data.corpus import is_json_array, read_json_array
from ptmkit.errors import UserError

Record = dict[str, str]


class Row(dict):
    """A record read from a file, remembering the line it came from, so that a bad value found
    later (a missing field, a label that is not a number) is reported as `file:line`. It is a
    plain dict otherwise (equal to one, serialisable), so code building records needs no change."""

    __slots__ = ("line",)

    def __init__(self, values: Mapping[str, Any] | Iterable[tuple[str, Any]], line: int) -> None:
        super().__init__(values)
        self.line = line


def record_where(path: str | Path, records: Sequence[Record], index: int) -> str:
    """Where records[index] is: `file:line` for a row read from a file, else its example number
    (records built in memory, e.g. from parallel text files, whose index is the line)."""
    line = getattr(records[index], "line", None)
    return f"{path}:{line}" if line is not None else f"{path}: example {index + 1}"


def _open(path: Path) -> io.TextIOBase:
    # utf-8-sig strips the byte-order mark some official TSVs start with
    # errors="replace": real corpora (gensim's polarity sample) carry stray cp1252 bytes
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path), encoding="utf-8-sig", errors="replace", newline="")
    return open(path, encoding="utf-8-sig", errors="replace", newline="")


def read_records(path: str | Path, *, columns: Sequence[str] | None = None) -> list[Record]:
    """Rows of a .jsonl / .json (lines or one array) / .tsv / .csv / fastText file (optionally
    .gz) as dicts of strings, or of a Hugging Face dataset (.parquet, .arrow, a save_to_disk
    directory; `ptmkit.data.hf_datasets`), `Row.line` then being the row's number. Nested
    objects' fields are also there by dotted name.

    TSVs are read with quoting disabled, as GLUE needs (STS-B and QNLI contain bare quotes).
    `columns` names the fields of a header-less TSV (CoLA).
    """
    path = Path(path)
    if hf_datasets.is_dataset(path):
        records = [Row(with_nested_fields(row), n) for n, row in enumerate(hf_datasets.iter_rows(path), 1)]
        if not records:
            raise UserError("no examples in the dataset", str(path), "check that it is not empty")
        return records
    if not path.is_file():
        raise UserError("data file not found", str(path), "check the path")
    kind = path.name.removesuffix(".gz").rsplit(".", 1)[-1].lower()
    csv.field_size_limit(sys.maxsize)
    if is_json_array(path):
        records = [Row(with_nested_fields(record), n) for n, record in enumerate(read_json_array(path), 1)]
        if not records:
            raise UserError("no examples in the file", str(path), "check that the file is not empty")
        return records
    with _open(path) as f:
        if kind in ("jsonl", "json"):
            records = [_json_record(line, path, n) for n, line in enumerate(f, 1) if line.strip()]
        elif kind in ("tsv", "csv"):
            reader = (csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if kind == "tsv"
                      else csv.reader(f))
            # line_num is read after the reader produced `row`: the (last) line of that row
            rows = [(reader.line_num, row) for row in reader if row]
            header = list(columns) if columns else (rows.pop(0)[1] if rows else [])
            for n, row in rows:
                _check_width(row, header, f"{path}:{n}", kind)
            records = [Row(zip(header, row), n) for n, row in rows]
        else:
            lines = [(n, line.strip()) for n, line in enumerate(f, 1) if line.strip()]
            if not lines or not lines[0][1].startswith(FASTTEXT_LABEL):
                raise UserError(f"unsupported data format .{kind}", str(path),
                                "use .jsonl, .tsv, .csv or fastText lines (`__label__X text`)")
            records = [_fasttext_record(line, path, n) for n, line in lines]
    if not records:
        raise UserError("no examples in the file", str(path), "check that the file is not empty")
    return records


def _check_width(row: list[str], header: list[str], where: str, kind: str) -> None:
    """More fields than the header names (trailing empty ones aside): a tab or comma inside a
    text cut it, and the label column would silently read a piece of the text."""
    if len(row) > len(header) and any(row[len(header):]):
        fix = ("replace the tab inside the text (TSV is read without quoting)" if kind == "tsv"
               else "put the text that holds a comma in double quotes")
        raise UserError(f"row has {len(row)} fields, the header {len(header)}", where, fix)


FASTTEXT_LABEL = "__label__"


def _fasttext_record(line: str, path: Path, number: int) -> Record:
    """`__label__pos some text` (fastText's format, used by gensim's polarity sample)."""
    label, _, text = line.partition(" ")
    if not label.startswith(FASTTEXT_LABEL):
        raise UserError("line does not start with __label__", f"{path}:{number}", "fix the line")
    return Row({"label": label.removeprefix(FASTTEXT_LABEL), "text": text.strip()}, number)


def _json_record(line: str, path: Path, number: int) -> Record:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as err:
        raise UserError(f"invalid JSON ({err.msg})", f"{path}:{number}", "fix or remove the line") from None
    if not isinstance(value, dict):
        raise UserError("a JSON line must be an object", f"{path}:{number}", 'write {"text": ..., "label": ...}')
    return Row(with_nested_fields(value), number)


def with_nested_fields(record: dict[str, Any]) -> dict[str, Any]:
    """The record with each field of a nested object also under its dotted name, so that
    `--source-field translation.en` reads the Hub's translation datasets
    (`{"translation": {"en": ..., "de": ...}}`)."""
    nested = {f"{key}.{inner}": value for key, fields in record.items() if isinstance(fields, dict)
              for inner, value in with_nested_fields(fields).items()}
    return {**record, **nested} if nested else record


FIELD_FLAGS = {"--text-fields": ("text_fields", "text field(s)"), "--label-field": ("label_field", "label field"),
               "--source-field": ("source_field", "source field"), "--target-field": ("target_field", "target field")}
"""finetune's field flags -> (the FinetuneSpec attribute they set, what the field holds). The task
readers' errors name the flags; commands without them (evaluate, compare) name the fields."""


def flags_as_keys(text: str) -> str:
    """`text` with finetune's field flags written as the config keys they set (`text_fields`)."""
    for flag, (key, _) in FIELD_FLAGS.items():
        text = text.replace(flag, key)
    return text


def require_fields(records: list[Record], fields: Sequence[str], path: str | Path, flag: str) -> None:
    """A missing field is the user's: absent from the first record it is most likely a wrong
    name (list the available ones); absent from, or null in, a later one it is a bad row (name
    its line), which would otherwise surface as a KeyError mid-encoding or a class "None"."""
    available = list(records[0].keys())
    for field in fields:
        if field not in records[0]:
            raise UserError(f"field {field!r} not found", str(path),
                            f"use {flag} with one of: {', '.join(map(str, available))}")
        # one pass of C-level dict lookups per field; the common, clean file never leaves it
        bad = next((i for i, r in enumerate(records) if r.get(field) is None), None)
        if bad is not None:
            state = "missing" if field not in records[bad] else "is null"
            raise UserError(f"field {field!r} {state}", record_where(path, records, bad),
                            f"give every example a {field!r} value, or remove the line")


@dataclass(frozen=True)
class GlueSpec:
    """Where a GLUE task keeps its text and label, and how it is scored."""

    task: str
    text_fields: tuple[str, ...]
    label_field: str
    dev_files: tuple[str, ...] = ("dev.tsv",)
    columns: tuple[str, ...] | None = None
    metrics: tuple[str, ...] = ("accuracy",)


GLUE: dict[str, GlueSpec] = {
    "sst2": GlueSpec("classify", ("sentence",), "label"),
    "cola": GlueSpec("classify", ("sentence",), "label", metrics=("mcc", "accuracy"),
                     columns=("source", "label", "author_label", "sentence")),
    "mrpc": GlueSpec("classify", ("#1 String", "#2 String"), "Quality", metrics=("f1", "accuracy")),
    "qqp": GlueSpec("classify", ("question1", "question2"), "is_duplicate", metrics=("f1", "accuracy")),
    "stsb": GlueSpec("regress", ("sentence1", "sentence2"), "score", metrics=("pearson", "spearman")),
    "qnli": GlueSpec("classify", ("question", "sentence"), "label"),
    "rte": GlueSpec("classify", ("sentence1", "sentence2"), "label"),
    "wnli": GlueSpec("classify", ("sentence1", "sentence2"), "label"),
    "mnli": GlueSpec("classify", ("sentence1", "sentence2"), "gold_label",
                     dev_files=("dev_matched.tsv", "dev_mismatched.tsv")),
}
GLUE_DIRS = {"sst2": "SST-2", "cola": "CoLA", "mrpc": "MRPC", "qqp": "QQP", "stsb": "STS-B",
             "qnli": "QNLI", "rte": "RTE", "wnli": "WNLI", "mnli": "MNLI"}


def glue_spec(name: str) -> GlueSpec:
    key = name.lower().replace("-", "")
    if key not in GLUE:
        raise UserError(f"unknown GLUE task {name!r}", "--task", f"use glue:{'|'.join(GLUE)}")
    return GLUE[key]


def glue_files(name: str, data_dir: str | Path) -> tuple[Path, list[Path]]:
    """train.tsv and dev file(s) of a GLUE task in DIR or DIR/<official task folder>."""
    key = name.lower().replace("-", "")
    root = Path(data_dir)
    if (root / GLUE_DIRS[key]).is_dir():
        root = root / GLUE_DIRS[key]
    spec = GLUE[key]
    train, devs = root / "train.tsv", [root / f for f in spec.dev_files]
    for path in [train, *devs]:
        if not path.is_file():
            raise UserError(f"GLUE file {path.name} not found", str(root),
                            f"point --data-dir at the folder holding the {GLUE_DIRS[key]} TSVs")
    return train, devs


def label_budget(labels: Sequence, n: int | None, seed: int, stratified: bool = True, *,
                 held_out: bool = False) -> np.ndarray:
    """Indices of a deterministic subset of `n` examples (all when n is None or too large).

    Stratified: each class keeps its share (largest-remainder rounding, at least one example per
    class when n allows), so small budgets do not lose a class by chance. `held_out`: the subset
    is taken out of the training data (a dev or selection slice), which never takes a class's
    last example (a class seen once would leave training altogether); it may then hold fewer.
    """
    total = len(labels)
    if n is None or n >= total:
        return np.arange(total)
    rng = np.random.default_rng(seed)
    if not stratified:
        return np.sort(rng.choice(total, size=n, replace=False))
    by_class: dict = defaultdict(list)
    for i, label in enumerate(labels):
        by_class[label].append(i)
    classes = sorted(by_class, key=str)
    sizes = np.array([len(by_class[c]) for c in classes])
    caps = sizes - 1 if held_out else sizes
    share = sizes * n / total
    counts = np.floor(share).astype(int)  # below each class's size, as n < total
    if n >= len(classes):
        counts = np.maximum(counts, np.minimum(1, caps))
    order = np.argsort(-(share - np.floor(share)), kind="stable")
    i = 0
    while counts.sum() < n and (counts < caps).any():
        c = order[i % len(classes)]
        if counts[c] < caps[c]:
            counts[c] += 1
        i += 1
    while counts.sum() > n:
        counts[np.argmax(counts)] -= 1
    picked = [rng.choice(by_class[c], size=k, replace=False) for c, k in zip(classes, counts)]
    return np.sort(np.concatenate(picked))


def batches_of(items: list, batch_size: int, rng: np.random.Generator | None) -> list[list]:
    """`items` in batches of `batch_size`, shuffled by `rng` (None: in order)."""
    order = rng.permutation(len(items)) if rng is not None else np.arange(len(items))
    return [[items[i] for i in order[k:k + batch_size]] for k in range(0, len(items), batch_size)]
