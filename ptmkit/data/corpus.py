"""Corpus readers: whatever layout the text comes in, pre-training sees documents of sentences.

Sentence boundaries are kept because several objectives need them (next-sentence / sentence-order
prediction, sentence permutation); document boundaries are kept so that no training pair straddles
two unrelated articles. The layout is chosen from the file name (``.jsonl``, ``.csv``, ``.xml``…,
looked up after a ``.gz`` / ``.bz2`` / ``.xz`` suffix, which is decompressed on the fly) or, for
any other name, sniffed from the content. Everything streams: a file is never held in memory.
"""

from __future__ import annotations

import bz2
import codecs
import csv
import gzip
import hashlib
import itertools
import json
import lzma
import os
import re
import sys
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from xml.etree.ElementTree import ParseError

from gensim.corpora.wikicorpus import extract_pages, filter_wiki

from ptmkit.data import hf_datasets
from ptmkit.data.sentences import split_sentences
from ptmkit.errors import UserError

PathArg = str | os.PathLike
CorpusPaths = PathArg | Sequence[PathArg]

_COMPRESSED = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
# Suffixes that are never text; a directory may hold them next to the corpus.
_BINARY_SUFFIXES = frozenset(
    ".pyc .pyo .so .o .a .dll .exe .bin .zip .tar .tgz .7z .rar .zst .png .jpg .jpeg .gif "
    ".pdf .pt .pth .ckpt .safetensors .npy .npz .pkl".split()
)
# Layouts named by the file suffix; any other file is sniffed (see _sniff_layout).
_SUFFIX_LAYOUTS = {
    ".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "tsv", ".xml": "mediawiki"
}
_TEXT_FIELD_FIX = "pass --text-field with the one that holds the text"
# JSON can escape half of a surrogate pair ("\ud83d" alone, an emoji cut in two): json.loads keeps
# it, and no UTF-8 encoder (the sentence splitter, the tokenizer trainer) takes it.
_LONE_SURROGATE = re.compile(r"[\ud800-\udfff]")
_JSON_LINES_FIX = ("each line must be one JSON object (or a .json file one array of them); "
                   "make lines of a JSON array with `jq -c '.[]'`")

# Extractors leave "Name () is" / "哲學（）是" where a pronunciation template was removed.
_EMPTY_PARENS = re.compile(r" ?[(（][\s,;，；、]*[)）]")
# filter_wiki keeps bold/italic quotes, headings ("==History=="), lists and table cells. Only prose
# paragraphs are kept, as WikiExtractor does by default: no heading, list or table line, and the
# paragraph must end like a sentence (drops image captions and stray cells).
_WIKI_EMPHASIS = re.compile(r"'{2,}")
_WIKI_NON_PROSE_START = frozenset("=*#;|!{}+")
_PROSE_END = re.compile(r"[.!?…。！？\"”’」』]$")
# How much of a file without a telling name _sniff_layout reads, and how many text lines per
# blank-line gap (an average document's length) still make documents separated by blank lines.
_SNIFF_LINES = 100_000
_LINES_PER_GAP = 100


@dataclass(frozen=True)
class Document:
    """One document, split into sentences so objectives can pair, order and mask them.

    ``sentences`` is non-empty and each sentence is stripped and non-empty; ``source`` is the file
    the document came from, for messages about the data.
    """

    sentences: tuple[str, ...]
    source: str


def list_corpus_files(paths: CorpusPaths) -> list[Path]:
    """Expand the corpus paths into files, checking them now so a typo fails before training starts.

    Directories are walked recursively in sorted order (stable corpus order across machines),
    skipping hidden entries and binary files such as ``.pyc`` or ``.zip``. A file named twice
    (``dd dd/lines.txt``, or two links to it) is kept once, where it first comes: read twice, its
    documents would be trained on twice and could land in both splits.
    """
    paths = _as_list(paths)
    if not paths:
        raise UserError("no corpus paths given", "corpus", "name at least one file or directory")
    files: list[Path] = []
    for path in map(Path, paths):
        if hf_datasets.is_dataset(path):
            hf_datasets.refuse_dataset_dict(path)  # before any work
            files.append(path)
        elif path.is_dir():
            found = _walk_corpus_dir(path)
            if not found:
                raise UserError(
                    "directory holds no corpus files",
                    path,
                    "point at the directory with the text files (hidden, binary files are skipped)",
                )
            files.extend(found)
        elif not path.exists():
            raise UserError("corpus path does not exist", path,
                            "check the spelling and the working directory")
        elif _is_binary(path):
            raise UserError(
                "not a text corpus file",
                path,
                "unpack it first: corpora are text, JSON lines, CSV/TSV, MediaWiki XML (optionally "
                ".gz/.bz2/.xz) or Hugging Face datasets (Parquet, Arrow, save_to_disk directories)",
            )
        else:
            files.append(path)
    unique: dict[Path, Path] = {}
    for path in files:
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


def file_digests(paths: CorpusPaths) -> Iterator[bytes]:
    """The SHA-256 of each corpus file's bytes, in corpus order: cache keys built from them follow
    what the files hold, not where they are or when they were touched (hashing reads ~1 GB/s)."""
    for path in list_corpus_files(paths):
        if not path.is_dir():
            yield _file_digest(path)
            continue
        h = hashlib.sha256()  # a saved dataset's: of its files' digests, its state file's included
        for file in hf_datasets.dataset_files(path):
            h.update(_file_digest(file))
        yield h.digest()


def _file_digest(path: Path) -> bytes:
    with open(path, "rb") as stream:
        return hashlib.file_digest(stream, "sha256").digest()


def text_bytes(path: Path) -> int:
    """About how many bytes of text a corpus file holds, without reading it: a gzip file records
    its own size, bz2/xz are taken as a quarter of their text, datasets as `hf_datasets` says."""
    if hf_datasets.is_dataset(path):
        return hf_datasets.text_bytes(path)
    size = path.stat().st_size
    if path.suffix == ".gz" and size >= 4:  # an empty or cut-off file is reported when it is read
        with open(path, "rb") as f:
            f.seek(-4, 2)
            return int.from_bytes(f.read(4), "little")  # ISIZE: the size modulo 4 GiB
    return size * (4 if path.suffix in (".bz2", ".xz") else 1)


def read_documents(paths: CorpusPaths, *, text_field: str = "text",
                   split: bool = True) -> Iterator[Document]:
    """Stream the documents of all files in order; the paths are checked before this returns.

    ``split=False`` keeps each paragraph (line) as one unsplit "sentence": much cheaper when only
    the text matters. Raises :class:`UserError` (while iterating) if the files hold no document.
    """
    paths = _as_list(paths)
    files = list_corpus_files(paths)
    return _documents(files, text_field=text_field, split=split, where=", ".join(map(str, paths)))


def read_texts(paths: CorpusPaths, *, text_field: str = "text") -> Iterator[str]:
    """One string per document, paragraphs joined by newlines, for tokenizer training.

    The sentence splitter is not run: tokenizer trainers only need the raw text. Newline is used as
    the joiner because it is whitespace to every pre-tokenizer yet adds no space inside Chinese.
    """
    documents = read_documents(paths, text_field=text_field, split=False)
    return ("\n".join(document.sentences) for document in documents)


def _as_list(paths: CorpusPaths) -> list[PathArg]:
    """Accept one path as well as many: a bare string must not be iterated letter by letter."""
    return [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)


def _walk_corpus_dir(root: Path) -> list[Path]:
    """Corpus files under ``root`` sorted by path, never descending into hidden directories;
    linked directories are followed (`corpus/wiki -> /data/wiki`), each real one read once."""
    found, seen = [], set()
    for directory, subdirs, names in os.walk(root, followlinks=True):
        real = os.path.realpath(directory)
        if real in seen:  # a link back up the tree, or a second link to one place
            subdirs[:] = []
            continue
        seen.add(real)
        broken = next((name for name in names if not os.path.exists(os.path.join(directory, name))), None)
        if broken is not None:
            raise UserError("broken link in the corpus directory", os.path.join(directory, broken),
                            "fix the link or remove it")
        subdirs[:] = [name for name in subdirs if not name.startswith(".")]
        found += [Path(directory, name) for name in subdirs if hf_datasets.is_dataset(Path(directory, name))]
        subdirs[:] = [name for name in subdirs if not hf_datasets.is_dataset(Path(directory, name))]
        found += [Path(directory, name) for name in names if not name.startswith(".")]
    return sorted(path for path in found if not _is_binary(path))


def suffix_layout(path: Path) -> str | None:
    """The layout a file's name decides (``.tsv``: a table), or None where its content does: the
    same bytes named ``r.txt`` and ``r.tsv`` are different documents."""
    return _SUFFIX_LAYOUTS.get(_name_suffix(path))


def _name_suffix(path: Path) -> str:
    """The suffix under any compression suffix: ``a.jsonl.gz`` → ``.jsonl``."""
    name = path.name.lower()
    stem, suffix = os.path.splitext(name)
    return os.path.splitext(stem)[1] if suffix in _COMPRESSED else suffix


def _is_binary(path: Path) -> bool:
    return _name_suffix(path) in _BINARY_SUFFIXES


def _open_text(path: Path, *, newline: str | None = None) -> IO[str]:
    """Open decompressed UTF-8 text; bad bytes become U+FFFD rather than stopping a long run."""
    opener = _COMPRESSED.get(path.suffix.lower(), open)
    return opener(path, "rt", encoding="utf-8-sig", errors="replace", newline=newline)


def _open_binary(path: Path) -> IO[bytes]:
    return _COMPRESSED.get(path.suffix.lower(), open)(path, "rb")


def _documents(files: list[Path], *, text_field: str, split: bool,
               where: str) -> Iterator[Document]:
    found = False
    for path in files:
        for paragraphs in _read_file(path, text_field):
            document = _make_document(paragraphs, str(path), split)
            if document is not None:
                found = True
                yield document
    if not found:
        raise UserError("no documents found", where,
                        "check the files are non-empty text / the right --text-field")


def _make_document(paragraphs: Iterable[str], source: str, split: bool) -> Document | None:
    """Clean the paragraphs into sentences; ``None`` when nothing is left (an empty record)."""
    texts = [paragraph.replace("\ufeff", "").strip() for paragraph in paragraphs]
    sentences = [sentence for text in texts if text
                 for sentence in (split_sentences(text) if split else (text,))]
    return Document(tuple(sentences), source) if sentences else None


def _read_file(path: Path, text_field: str) -> Iterator[list[str]]:
    """Yield each document of one file as its list of raw paragraphs."""
    if hf_datasets.is_dataset(path):
        yield from _dataset_documents(path, text_field)
        return
    try:
        head = _head(path)
        if not head:
            return
        _check_utf8(head, path)
        layout = suffix_layout(path) or _sniff_layout(path)
        if layout == "jsonl":
            yield from _json_lines_documents(path, text_field)
        elif layout in ("csv", "tsv"):
            yield from _table_documents(path, text_field, tabs=layout == "tsv")
        elif layout == "mediawiki":
            yield from _mediawiki_documents(path)
        else:
            yield from _plain_documents(path, layout)
    except (OSError, EOFError, zlib.error, lzma.LZMAError) as error:  # truncated or corrupt, permissions
        raise UserError(f"cannot read corpus file ({error})", path,
                        "check the file is complete (e.g. `gzip -t`) and readable") from error


def _head(path: Path) -> bytes:
    """The first (decompressed) bytes of a file, enough to tell text from binary."""
    with _open_binary(path) as stream:
        return stream.read(1 << 16)


def _check_utf8(head: bytes, path: Path) -> None:
    """Reject a binary or non-UTF-8 file by its head: read with errors="replace" it would train on
    noise. Only the head is checked, so a stray bad byte deep inside a corpus does not stop a run."""
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head)  # not final: a character may be cut off
        bad = head.find(b"\0")
    except UnicodeDecodeError as error:
        bad = error.start
    if bad >= 0:
        raise UserError(f"binary or non-UTF-8 data at byte {bad}", path,
                        "convert the file to UTF-8 text (e.g. `iconv -f latin1 -t utf-8`) or leave it out")


def _json_lines_documents(path: Path, text_field: str) -> Iterator[list[str]]:
    if is_json_array(path):
        for number, record in enumerate(read_json_array(path), start=1):
            yield _record_text(record, text_field, f"{path}: item {number}").splitlines()
        return
    with _open_text(path) as lines:
        for number, line in enumerate(lines, start=1):
            if line.strip():
                yield _json_text(line, text_field, f"{path}:{number}").splitlines()


def is_json_array(path: Path) -> bool:
    """A .json file (optionally compressed) holding one JSON array rather than JSON lines."""
    return _name_suffix(path) == ".json" and _head(path).lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"[")


def read_json_array(path: Path) -> list[dict]:
    """The objects of a file holding one JSON array (pandas' `to_json(orient="records")`), read
    whole: it suits task-sized files; large corpora belong in JSON lines."""
    with _open_text(path) as stream:
        try:
            records = json.load(stream)
        except json.JSONDecodeError as error:
            raise UserError(f"invalid JSON ({error.msg})", f"{path}:{error.lineno}", _JSON_LINES_FIX) from None
    for number, record in enumerate(records, start=1):
        if not isinstance(record, dict):
            raise UserError(f"a JSON array must hold objects: item {number} is not one", f"{path}: item {number}",
                            _JSON_LINES_FIX)
    return records


def _json_text(line: str, text_field: str, where: str) -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise UserError(f"malformed JSON line ({error.msg})", where, _JSON_LINES_FIX) from None
    except RecursionError:  # thousands of nested brackets: not a record of text
        raise UserError("JSON line nested too deeply", where, _JSON_LINES_FIX) from None
    if not isinstance(record, dict):
        raise UserError("JSON line is not an object", where, _JSON_LINES_FIX)
    return _record_text(record, text_field, where)


def _record_text(record: dict, text_field: str, where: str) -> str:
    """The text of a JSON line or dataset row: a string, or a list of strings (one paragraph
    each); a null is an empty document. A lone surrogate becomes U+FFFD, as a bad byte of a text
    file does."""
    if text_field not in record:
        keys = ", ".join(map(repr, record)) or "none"
        raise UserError(f"no field {text_field!r}", where,
                        f"available keys: {keys}; {_TEXT_FIELD_FIX}")
    text = record[text_field]
    if text is None:
        return ""
    if isinstance(text, list) and all(isinstance(part, str) for part in text):
        text = "\n".join(text)  # a document stored as its sentences (SciTLDR's `source`)
    elif not isinstance(text, str):
        raise UserError(f"field {text_field!r} holds {type(text).__name__}, not text", where,
                        _TEXT_FIELD_FIX)
    return _LONE_SURROGATE.sub("\ufffd", text)  # the text itself when there is none: no copy


def _dataset_documents(path: Path, text_field: str) -> Iterator[list[str]]:
    """One document per row of a Hugging Face dataset (Parquet, Arrow, save_to_disk)."""
    names = hf_datasets.column_names(path)
    if text_field not in names:
        raise UserError(f"no column {text_field!r}", path,
                        f"its columns are {', '.join(map(repr, names))}; {_TEXT_FIELD_FIX}")
    for number, row in enumerate(hf_datasets.iter_rows(path, [text_field]), start=1):
        yield _record_text(row, text_field, f"{path}: row {number}").splitlines()


def _table_documents(path: Path, text_field: str, *, tabs: bool) -> Iterator[list[str]]:
    """One document per row of a CSV/TSV file with a header row.

    TSV is read without quote handling: real TSV corpora (GLUE) hold bare ``"`` characters that a
    quoting reader would take as the start of a multi-line cell.
    """
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # an article can exceed the 128 KiB default
    dialect = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if tabs else {}
    with _open_text(path, newline="") as stream:
        rows = csv.reader(stream, **dialect)
        header = next(rows, None)
        if header is None:  # nothing but a byte-order mark: an empty sheet
            return
        column = _text_column(header, text_field, path)
        for row in rows:
            if column < len(row):
                yield row[column].splitlines()


def _text_column(header: list[str], text_field: str, path: Path) -> int:
    names = [name.strip() for name in header]
    if text_field not in names:
        columns = ", ".join(map(repr, names)) or "none"
        raise UserError(
            f"no column {text_field!r}",
            path,
            f"columns are {columns} (the first row must be a header); {_TEXT_FIELD_FIX}",
        )
    return names.index(text_field)


def _mediawiki_documents(path: Path) -> Iterator[list[str]]:
    """Articles of a MediaWiki dump; redirects and other namespaces (Category:, File:…) are skipped.

    The namespace comes from each page's ``<ns>`` element rather than a title prefix, because
    article titles may contain a colon ("Star Wars: Episode IV").
    """
    with _open_binary(path) as stream:
        try:
            for _title, markup, _page_id in extract_pages(stream, filter_namespaces=("0",)):
                if markup and not markup.lstrip()[:9].lower() == "#redirect":
                    yield _wiki_paragraphs(markup)
        except (ParseError, ValueError) as error:  # ValueError: XML, but not a MediaWiki export
            raise UserError(f"malformed XML ({error})", path,
                            "a .xml corpus must be a complete MediaWiki dump "
                            "(*-pages-articles.xml.bz2)") from None


def _wiki_paragraphs(markup: str) -> list[str]:
    paragraphs = []
    for line in filter_wiki(markup).splitlines():
        line = _WIKI_EMPHASIS.sub("", line).strip().lstrip(":").strip()
        if line and line[0] not in _WIKI_NON_PROSE_START and _PROSE_END.search(line):
            paragraphs.append(_EMPTY_PARENS.sub("", line))
    return paragraphs


def _plain_documents(path: Path, layout: str) -> Iterator[list[str]]:
    with _open_text(path) as lines:
        if layout == "wikiextractor":
            yield from _wikiextractor_documents(lines)
        elif layout == "blocks":
            yield from _blank_line_blocks(lines)
        else:
            yield from ([line] for line in lines)


def _sniff_layout(path: Path) -> str:
    """Tell the layout of a file whose name does not: by its first text line, else by its blank
    lines.

    ``mediawiki`` (split dumps are named ``…-pages-articles1.xml-p1p41242.bz2``),
    ``wikiextractor`` (``<doc …>`` blocks), ``jsonl`` (a JSON object: WikiExtractor's ``--json``
    output, ``AA/wiki_00``), ``blocks`` (documents separated by blank lines) or ``lines`` (one
    document per line). Only the first ``_SNIFF_LINES`` lines are read: a multi-GB archive is not
    decompressed an extra time. They make blocks when blank-line gaps between text lines are not
    rare, one at least per ``_LINES_PER_GAP`` text lines, so a stray empty record does not merge
    a thousand one-per-line reviews into two documents. Blank lines at the very start or end are
    no gaps.
    """
    text_lines = gaps = 0
    after_blank = False
    with _open_text(path) as lines:
        for line in itertools.islice(lines, _SNIFF_LINES):
            if not line.strip():
                after_blank = text_lines > 0
                continue
            if text_lines == 0:
                first = line.lstrip()
                if first.startswith("<doc "):
                    return "wikiextractor"
                if first.startswith("<mediawiki"):
                    return "mediawiki"
                if _is_json_object(first):
                    return "jsonl"
            text_lines += 1
            gaps += after_blank
            after_blank = False
    return "blocks" if gaps and text_lines <= _LINES_PER_GAP * gaps else "lines"


def _is_json_object(line: str) -> bool:
    if not line.startswith("{"):  # the common case, decided without parsing a long line
        return False
    try:
        return isinstance(json.loads(line), dict)
    except (ValueError, RecursionError):
        return False


def _blank_line_blocks(lines: Iterable[str]) -> Iterator[list[str]]:
    block: list[str] = []
    for line in lines:
        if line.strip():
            block.append(line)
        elif block:
            yield block
            block = []
    if block:
        yield block


def _wikiextractor_documents(lines: Iterable[str]) -> Iterator[list[str]]:
    """Bodies of ``<doc …>`` blocks; the first line repeats the title and is dropped.

    A block cut off by the end of the file (a truncated shard) still counts.
    """
    block: list[str] | None = None
    for line in lines:
        if line.startswith("<doc "):
            block = []
        elif line.startswith("</doc>"):
            if block:
                yield _wikiextractor_body(block)
            block = None
        elif block is not None and line.strip():
            block.append(line)
    if block:
        yield _wikiextractor_body(block)


def _wikiextractor_body(block: list[str]) -> list[str]:
    return [_EMPTY_PARENS.sub("", paragraph) for paragraph in block[1:]]
