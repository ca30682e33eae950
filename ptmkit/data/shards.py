"""Token shards: a corpus tokenized once into flat memory-mapped arrays plus a boundary index.

Layout of a prepared directory::

    manifest.json               format, tokenizer hash, dtype, counts, options
    tokenizer/tokenizer.json    the tokenizer the ids belong to
    {train,val}.bin             all token ids of the split, documents back to back
    {train,val}.sentences.npy   int64 offset where each sentence starts (+ final end)
    {train,val}.documents.npy   int64 offset where each document starts (+ final end)
    {train,val}.word_starts.bin uint8 per token, 1 where a word starts (only with `segment`)

Writing streams (a corpus larger than RAM works: only the boundary offsets stay in memory, as
compact int64 chunks) and is atomic: everything goes to a temporary folder in the nearest existing
directory above the output, renamed to the output only when complete (its missing parents are made
then, so failed input leaves nothing behind). An output that is a link is written where it points.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ptmkit.data.corpus import (Document, file_digests, list_corpus_files, read_documents, suffix_layout,
                                text_bytes)
from ptmkit.data.segment import SEGMENTERS, segment_word_starts
from ptmkit.data.tokenizer import Tokenizer
from ptmkit.errors import UserError
from ptmkit.fileio import is_within, nearest_existing, share

FORMAT = 1
SPLITS = ("train", "val")


@dataclass(frozen=True)
class Window:
    """A slice of the token stream with the boundaries that fall inside it.

    `sentence_starts` / `document_starts` are positions within `tokens` where a new sentence
    or document begins (sorted; 0 is included when the window starts on a boundary).
    `word_starts` (bool per token) marks the tokens that start a word, when the data was
    prepared with a word segmenter (Chinese whole-word masking); else None.
    """

    tokens: np.ndarray
    sentence_starts: np.ndarray
    document_starts: np.ndarray
    word_starts: np.ndarray | None = None


OFFSET = np.dtype(np.int64)
MIN_DOCUMENTS_FOR_FALLBACK = 10
"""A corpus of this many documents or more never ends with an empty validation split: if the
hash picked none of its documents (few, long ones, e.g. 64 Wikipedia articles at 1%), the last
one is held out, so pre-training still reports a validation loss and the feature rank."""

# tokens, sentence lengths, sentences per document, word starts: whole documents, as written
_Documents = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]


@dataclass
class _SplitWriter:
    """Appends one split's tokens and boundary offsets to disk as they come: memory stays flat
    however large the corpus (offsets are streamed too, and turned into .npy files at the end)."""

    path: Path
    dtype: np.dtype
    segmented: bool = False
    n_tokens: int = 0
    n_documents: int = 0
    n_sentences: int = 0

    def __post_init__(self) -> None:
        self.file = open(self.path.with_suffix(".bin"), "wb")
        self.sentence_file = open(self.path.with_suffix(".sentences.raw"), "wb")
        self.document_file = open(self.path.with_suffix(".documents.raw"), "wb")
        self.word_file = open(self.path.with_suffix(".word_starts.bin"), "wb") if self.segmented else None

    def add(self, tokens: np.ndarray, sentence_lengths: np.ndarray, document_sizes: np.ndarray,
            word_starts: np.ndarray | None = None) -> None:
        """Append whole documents: their tokens back to back, the length of each sentence and the
        number of sentences of each document (none of them zero), one write per file."""
        if not len(document_sizes):
            return
        starts = self.n_tokens + np.concatenate([[0], np.cumsum(sentence_lengths)])
        starts[np.concatenate([[0], np.cumsum(document_sizes)[:-1]])].astype(OFFSET).tofile(self.document_file)
        starts[:-1].astype(OFFSET).tofile(self.sentence_file)
        tokens.astype(self.dtype).tofile(self.file)
        if self.word_file is not None:
            word_starts.astype(np.uint8).tofile(self.word_file)
        self.n_tokens += len(tokens)
        self.n_documents += len(document_sizes)
        self.n_sentences += len(sentence_lengths)

    def close(self) -> dict[str, int]:
        for f in (self.file, self.word_file):
            if f is not None:
                f.close()
        for name, f in (("sentences", self.sentence_file), ("documents", self.document_file)):
            np.array([self.n_tokens], dtype=OFFSET).tofile(f)  # the end of the last one
            f.close()
            _raw_to_npy(self.path.with_suffix(f".{name}.raw"), self.path.with_suffix(f".{name}.npy"))
        return {"tokens": self.n_tokens, "documents": self.n_documents, "sentences": self.n_sentences}


def _raw_to_npy(raw: Path, npy: Path) -> None:
    """Prefix a file of native int64s with an .npy header, streaming (no array in memory)."""
    with open(npy, "wb") as out, open(raw, "rb") as source:
        header = {"descr": OFFSET.str, "fortran_order": False, "shape": (raw.stat().st_size // OFFSET.itemsize,)}
        np.lib.format.write_array_header_1_0(out, header)
        shutil.copyfileobj(source, out, 1 << 20)
    raw.unlink()


def _read_ahead(batches: Iterator[list[Document]]) -> Iterator[list[Document]]:
    """The same batches, each next one read (and split into sentences) in a thread while the
    caller encodes this one: the tokenizer and the sentence splitter both release the GIL."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(next, batches, None)
        while (batch := pending.result()) is not None:
            pending = pool.submit(next, batches, None)
            yield batch


def _batched(documents: Iterable[Document], size: int) -> Iterator[list[Document]]:
    batch: list[Document] = []
    for doc in documents:
        batch.append(doc)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _select_documents(tokens: np.ndarray, lengths: np.ndarray, document_sizes: list[int],
                      chosen: np.ndarray, word_starts: np.ndarray | None) -> _Documents:
    """The chosen documents of an encoded batch, without the sentences that encoded to no token
    and the documents left with none: tokens, sentence lengths, sentences per document, word
    starts (see `_SplitWriter.add`)."""
    document_of_sentence = np.repeat(np.arange(len(document_sizes)), document_sizes)
    kept = lengths > 0
    kept_per_document = np.bincount(document_of_sentence[kept], minlength=len(document_sizes))
    chosen = chosen & (kept_per_document > 0)
    token_mask = np.repeat(chosen[document_of_sentence], lengths)
    return (tokens[token_mask], lengths[kept & chosen[document_of_sentence]], kept_per_document[chosen],
            None if word_starts is None else word_starts[token_mask])


def _split_last_document(tokens: np.ndarray, lengths: np.ndarray, document_sizes: np.ndarray,
                         word_starts: np.ndarray | None) -> tuple[_Documents, _Documents]:
    """(all documents but the last, the last one) of `_select_documents`' output."""
    n_sentences = int(document_sizes[-1])
    n_tokens = int(lengths[len(lengths) - n_sentences:].sum())
    cut, sentence_cut = len(tokens) - n_tokens, len(lengths) - n_sentences
    head = (tokens[:cut], lengths[:sentence_cut], document_sizes[:-1],
            None if word_starts is None else word_starts[:cut])
    last = (tokens[cut:], lengths[sentence_cut:], document_sizes[-1:],
            None if word_starts is None else word_starts[cut:])
    return head, last


def _is_validation(index: int, fraction: float, seed: int) -> bool:
    """Deterministic per-document split, stable under corpus growth (hash of index and seed)."""
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64 < fraction


def corpus_fingerprint(paths: Sequence[str | os.PathLike], tokenizer: Tokenizer,
                       **options: object) -> str:
    """Key for caching prepared data: tokenizer, options and every file's content. Content, not
    path or mtime: a corpus re-mounted, copied or checked out again must not invalidate the
    prepared data and with it every pre-training keyed on it (hashing reads ~1 GB/s)."""
    h = hashlib.sha256(tokenizer.sha256().encode())
    for path, digest in zip(list_corpus_files(paths), file_digests(paths)):
        h.update(digest)
        if not path.is_dir() and suffix_layout(path):  # text files keep the keys they always had
            h.update(suffix_layout(path).encode())
    h.update(json.dumps(options, sort_keys=True).encode())
    return h.hexdigest()


def prepare(paths: Sequence[str | os.PathLike], tokenizer: Tokenizer, out: Path, *,
            val_fraction: float = 0.01, seq_len: int = 128, text_field: str = "text",
            seed: int = 0, batch_documents: int = 256, overwrite: bool = False,
            progress: bool = True, segment: str | None = None, inputs: Sequence[Path] = (),
            fingerprint: str | None = None) -> dict:
    """Tokenize a corpus into shards under `out`. Returns the manifest.

    `segment` ("jieba") also stores which tokens start a word of that word segmenter, for
    Chinese whole-word masking (see `ptmkit.data.segment`). `inputs`: further paths the run reads
    (the tokenizer's directory), which --overwrite of `out` must not delete, as the corpus files.
    `fingerprint` (a cache key, see `corpus_fingerprint`) is recorded in the manifest, so the
    shards and the key that says what made them appear together.
    """
    if seq_len < 1:
        raise UserError(f"--seq-len {seq_len} holds no token", "--seq-len", "use e.g. 128 (pretrain's default window)")
    if not 0 <= val_fraction < 1:
        raise UserError(f"val fraction {val_fraction} out of range", "--val-fraction",
                        "use a value in [0, 1), e.g. 0.01")
    if segment is not None and segment not in SEGMENTERS:
        raise UserError(f"unknown word segmenter {segment!r}", "--segment",
                        f"use one of: {', '.join(SEGMENTERS)}")
    files = list_corpus_files(paths)
    _check_output(out, overwrite, [*files, *map(Path, inputs)])
    dtype = np.dtype(np.uint16 if tokenizer.vocab_size <= 2**16 else np.uint32)
    target = Path(os.path.realpath(out))  # a link to the output directory stays a link
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=nearest_existing(target.parent)))
    bar = None
    try:
        writers = {split: _SplitWriter(tmp / split, dtype, segment is not None) for split in SPLITS}
        total_bytes = sum(map(text_bytes, files))
        # delay: an input error found in the first seconds prints no half-drawn bar
        bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc="prepare",
                   disable=not progress, delay=1.0)
        index = seen_bytes = 0
        # each batch's training documents are written one batch late, so that the corpus's last
        # document can still go to validation if the hash gave it none
        pending: _Documents | None = None
        for batch in _read_ahead(_batched(read_documents(files, text_field=text_field), batch_documents)):
            sentences = [doc.sentences for doc in batch]
            tokens, lengths = tokenizer.encode_grouped(sentences)
            starts = (np.concatenate(segment_word_starts(tokenizer, [s for doc in sentences for s in doc], segment))
                      if segment else None)
            validation = np.array([_is_validation(index + i, val_fraction, seed) for i in range(len(batch))])
            index += len(batch)
            document_sizes = list(map(len, sentences))
            writers["val"].add(*_select_documents(tokens, lengths, document_sizes, validation, starts))
            if pending is not None:
                writers["train"].add(*pending)
            pending = _select_documents(tokens, lengths, document_sizes, ~validation, starts)
            seen_bytes += sum(len(s) for doc in sentences for s in doc)
            bar.update(min(seen_bytes, total_bytes) - bar.n)
        if pending is not None:
            if (val_fraction > 0 and writers["val"].n_documents == 0 and len(pending[2])
                    and writers["train"].n_documents + len(pending[2]) >= MIN_DOCUMENTS_FOR_FALLBACK):
                pending, last = _split_last_document(*pending)
                writers["val"].add(*last)
            writers["train"].add(*pending)
        bar.update(total_bytes - bar.n)
        bar.close()
        counts = {split: writer.close() for split, writer in writers.items()}
        if counts["train"]["tokens"] == 0 and counts["val"]["tokens"]:
            raise UserError(f"val fraction {val_fraction} put all {counts['val']['documents']} document(s) "
                            "in the validation split, none in training", "--val-fraction",
                            "use more documents or a smaller --val-fraction (0: no validation)")
        if counts["train"]["tokens"] == 0:
            raise UserError("the corpus produced no tokens", ", ".join(map(str, paths)),
                            "check that the files contain text (and the --text-field)")
        tokenizer.save(tmp / "tokenizer")
        manifest = {
            "format": FORMAT, "tokenizer_sha256": tokenizer.sha256(), "vocab_size": tokenizer.vocab_size,
            "dtype": dtype.name, "seq_len": seq_len, "val_fraction": val_fraction, "seed": seed,
            "corpus": [str(f) for f in files], "splits": counts, "segment": segment,
            **({"fingerprint": fingerprint} if fingerprint is not None else {}),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        target.parent.mkdir(parents=True, exist_ok=True)
        _swap_in(share(tmp), target)
    except BaseException:
        if bar is not None:
            bar.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _swap_in(new: Path, target: Path) -> None:
    """Rename `new` to `target`; an old `target` is set aside first and deleted only once `new` is
    in place, so that an interruption (Ctrl-C) at any point leaves one of the two."""
    old, replacing = new.with_name(f"{new.name}.old"), target.exists()
    try:
        if replacing:
            os.replace(target, old)
        os.replace(new, target)
    except BaseException:
        if old.exists() and not target.exists():
            os.replace(old, target)
        raise
    if replacing:
        shutil.rmtree(old)


def _check_output(out: Path, overwrite: bool, inputs: Sequence[Path]) -> None:
    above = nearest_existing(out.parent)
    if (out.exists() and not out.is_dir()) or not above.is_dir():
        raise UserError("output path is, or lies under, a file", str(out), "choose a directory path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError("output directory is not empty", str(out),
                        "choose a new directory or pass --overwrite")
    inside = [path for path in inputs if path.exists() and is_within(path, out)]
    if inside and out.exists():
        raise UserError(f"--overwrite would delete {inside[0]}, which this run reads", str(out),
                        "choose an --out that holds none of the corpus files or the tokenizer")


class TokenShards:
    """Read side: one split of a prepared directory, memory-mapped."""

    def __init__(self, directory: str | os.PathLike, split: str = "train") -> None:
        self.directory, self.split = Path(directory), split
        manifest_path = self.directory / "manifest.json"
        if not manifest_path.is_file():
            raise UserError("not a prepared data directory (no manifest.json)", str(self.directory),
                            "create it with `ptmkit prepare --corpus ... --tokenizer ... --out DIR`")
        try:
            self.manifest = json.loads(manifest_path.read_text())
            if self.manifest.get("format") != FORMAT:
                raise UserError(f"prepared data format {self.manifest.get('format')} is not {FORMAT}",
                                str(manifest_path), "re-run `ptmkit prepare` with this version")
            self.tokens = _memmap(self.directory / f"{split}.bin", self.manifest["dtype"])
            self.word_starts = (_memmap(self.directory / f"{split}.word_starts.bin", np.uint8)
                                if self.manifest.get("segment") else None)
            # memory-mapped: a huge corpus's boundary index is paged in only where windows look
            self.sentence_offsets = np.load(self.directory / f"{split}.sentences.npy", mmap_mode="r")
            self.document_offsets = np.load(self.directory / f"{split}.documents.npy", mmap_mode="r")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise UserError(f"damaged prepared data ({err.__class__.__name__}: {err})", str(self.directory),
                            "run `ptmkit prepare` again into an empty directory") from None

    def __getstate__(self) -> dict[str, Any]:
        """Where the shards are, not their tokens: pickling a memmap copies the whole file into
        each DataLoader worker that spawn or forkserver starts (macOS, Python 3.14's Linux)."""
        return {"directory": self.directory, "split": self.split}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["directory"], state["split"])  # type: ignore[misc]

    def tokenizer(self) -> Tokenizer:
        return Tokenizer.load(self.directory / "tokenizer")

    def __len__(self) -> int:
        return len(self.tokens)

    def n_windows(self, length: int) -> int:
        """Full windows of `length` tokens (the partial tail is left out)."""
        return len(self.tokens) // length

    def window(self, index: int, length: int) -> Window:
        start, end = index * length, (index + 1) * length
        return Window(tokens=np.asarray(self.tokens[start:end], dtype=np.int64),
                      sentence_starts=_inside(self.sentence_offsets, start, end),
                      document_starts=_inside(self.document_offsets, start, end),
                      word_starts=(None if self.word_starts is None
                                   else np.asarray(self.word_starts[start:end], dtype=bool)))


def _memmap(path: Path, dtype: str | np.dtype) -> np.ndarray:
    """Read-only map of a flat array file; an empty file (a split with no documents) cannot be
    mapped, so it reads as an empty array."""
    return np.memmap(path, dtype=dtype, mode="r") if path.stat().st_size else np.zeros(0, dtype=dtype)


def _inside(offsets: np.ndarray, start: int, end: int) -> np.ndarray:
    lo, hi = np.searchsorted(offsets, [start, end])
    return np.asarray(offsets[lo:hi]) - start
