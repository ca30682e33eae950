"""Trainable tokenizers on Hugging Face ``tokenizers``, with every special token the objectives need.

Every tokenizer, whatever its kind, puts the same special tokens at the same ids::

    0 [PAD]  1 [UNK]  2 [CLS]  3 [SEP]  4 [MASK]  5 <s>  6 </s>  7..106 <extra_id_0>..<extra_id_99>

so objectives can refer to them by id, and a tokenizer is interchangeable between objectives.

Kinds:

* ``bpe`` -- byte-level BPE (GPT-2 / RoBERTa). The 256-byte alphabet means no ``[UNK]`` ever, and
  ``decode(encode(x)) == x`` exactly for every string. The leading space GPT-2 style tokenizers add
  (so a text's first word is tokenized like the words inside it) is put there by a normalizer
  (ByteLevel's own ``add_prefix_space`` skips texts that already start with a space, which makes
  decoding ambiguous) and taken off again by a ``Strip`` decoder, so ``"hello"`` encodes like
  ``" hello"`` in GPT-2 and round-trips exactly. A text that starts in a script written without
  spaces (Chinese, Japanese, Thai, ...; see ``_NO_SPACE_BEFORE``) gets none: inside such text no
  word follows a space, and the space would cost a token per sentence.
* ``wordpiece`` -- BERT (BertNormalizer, lowercased by default, CJK characters split apart;
  BertPreTokenizer; ``##`` continuation pieces); its alphabet is chosen first, within the
  vocabulary size, so that Chinese keeps its characters (see ``_alphabet``).
* ``unigram`` -- SentencePiece-style unigram LM (NFKC, Metaspace ``▁``).
* ``char`` -- one token per character (whitespace dropped), for Chinese or any script; the
  ``vocab_size - 107`` most frequent characters are kept, the rest become ``[UNK]``.

Text is always encoded WITHOUT special tokens (objectives add their own), and special-token
strings that occur in raw text (``"[MASK]"``, ``"</s>"``) are tokenized as ordinary text, never
turned into the special ids.

Imported tokenizers (:meth:`Tokenizer.from_hf`, for ``--init hf:DIR``) keep the ids of the
Hugging Face tokenizer they come from: their :class:`SpecialIds` are read from its declared
special tokens (see :func:`hf_special_ids`) and recorded in ``ptmkit_tokenizer.json`` (format
version 2), so objectives, which refer to special tokens only through ``Tokenizer.special``,
work unchanged.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tokenizers
from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, trainers

from ptmkit import __version__
from ptmkit.errors import UserError
from ptmkit.fileio import write_text_atomic

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<s>", "</s>")
N_SENTINELS = 100
SENTINEL_TOKENS = tuple(f"<extra_id_{i}>" for i in range(N_SENTINELS))
ALL_SPECIAL_TOKENS = SPECIAL_TOKENS + SENTINEL_TOKENS  # ids 0..106, in this order
N_SPECIAL = len(ALL_SPECIAL_TOKENS)
KINDS = ("bpe", "wordpiece", "unigram", "char")

# Smallest number of ordinary (non-special) ids each kind is allowed: bpe needs its 256-byte
# alphabet plus some merges; the others need room for at least a basic alphabet.
MIN_ORDINARY = {"bpe": 300, "wordpiece": 100, "unigram": 100, "char": 100}

TOKENIZER_FILE = "tokenizer.json"
META_FILE = "ptmkit_tokenizer.json"
_GROUP_MARKER = "\ufdd0"  # a noncharacter: never assigned, so real text should not hold it
_GROUPING_PROBE = ["Hello world.", "The cat sat", " spaced  out ", "[x] <y>", "中文句子。", "", "A. B"]
FORMAT_VERSION = 2
"""Newest metadata format read. Version 1: ptmkit's own specials at 0..106 (still written for
them, so older ptmkit reads new native tokenizers); version 2 adds ``special`` (imported ids)."""
ROLES = ("pad", "unk", "cls", "sep", "mask", "bos", "eos")
"""The named special-token roles of :class:`SpecialIds`, in field order."""

_MODEL_KIND = {"BPE": "bpe", "WordPiece": "wordpiece", "Unigram": "unigram", "WordLevel": "char"}
_RETRAIN = "retrain with `ptmkit tokenizer`"


@dataclass(frozen=True)
class SpecialIds:
    """Ids of the special tokens: 0..106 for ptmkit's own tokenizers; an imported tokenizer's
    own ids otherwise (several roles may then share one id, and ``sentinels`` may be empty)."""

    pad: int
    unk: int
    cls: int
    sep: int
    mask: int
    bos: int
    eos: int
    sentinels: tuple[int, ...]

    def all(self) -> frozenset[int]:
        """Every special id: the ids an objective must never mask or corrupt."""
        return frozenset((self.pad, self.unk, self.cls, self.sep, self.mask, self.bos, self.eos, *self.sentinels))


OWN_SPECIAL_IDS = SpecialIds(*range(len(SPECIAL_TOKENS)),
                             sentinels=tuple(range(len(SPECIAL_TOKENS), N_SPECIAL)))
"""The special ids of every tokenizer ptmkit trains (the order of ALL_SPECIAL_TOKENS)."""


def minimum_vocab_size(kind: str) -> int:
    """The smallest ``vocab_size`` (specials included) that :func:`train_tokenizer` accepts."""
    return N_SPECIAL + MIN_ORDINARY[kind]


def _special_problem(hf: tokenizers.Tokenizer) -> str | None:
    """Describe the first special token not registered as a special token at its expected id."""
    added = hf.get_added_tokens_decoder()
    for expected, token in enumerate(ALL_SPECIAL_TOKENS):
        actual = hf.token_to_id(token)
        if actual != expected:
            where = "missing" if actual is None else f"at id {actual}"
            return f"special token {token} is {where}, expected at id {expected}"
        entry = added.get(expected)
        if entry is None or entry.content != token or not entry.special:
            return f"{token} (id {expected}) is not registered as a special token"
    return None


def _flatten(rows: list[list[int]]) -> np.ndarray:
    return np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64, count=sum(map(len, rows)))


class Tokenizer:
    """Wraps :class:`tokenizers.Tokenizer`. Encodes WITHOUT adding special tokens."""

    def __init__(self, hf: tokenizers.Tokenizer, kind: str, *, lowercase: bool,
                 special: SpecialIds | None = None, borrowed: dict[str, str] | None = None) -> None:
        """``special`` None: ptmkit's own layout (specials at 0..106, checked). Given: the ids of
        an imported tokenizer (:meth:`from_hf`); ``borrowed`` then names the roles it lacked and
        which role's token stands in for each (e.g. GPT-2's ``{"pad": "eos"}``)."""
        if kind not in KINDS:
            raise ValueError(f"unknown tokenizer kind {kind!r}; expected one of {KINDS}")
        size = hf.get_vocab_size(with_added_tokens=True)
        if special is None:
            problem = _special_problem(hf)
            if problem is not None:
                raise ValueError(problem)
            ids = list(range(N_SPECIAL))
            special = SpecialIds(*ids[: len(SPECIAL_TOKENS)], sentinels=tuple(ids[len(SPECIAL_TOKENS):]))
            self.imported = False
        else:
            outside = sorted(i for i in special.all() if not 0 <= i < size)
            if outside:
                raise ValueError(f"special ids {outside} are outside the vocabulary of {size}")
            self.imported = True
        # Raw text that happens to contain "[MASK]" or "</s>" must not produce special ids:
        # objectives alone decide where specials go. (Not serialized, so set on every wrap.)
        hf.encode_special_tokens = True
        # A tokenizer.json from a hub may store truncation or padding (sentence-transformers save
        # both): ids are always the whole text, unpadded; objectives frame and pad their own.
        hf.no_truncation()
        hf.no_padding()
        self.hf = hf
        self.kind = kind
        self.lowercase = bool(lowercase)
        self.special = special
        self.borrowed: dict[str, str] = dict(borrowed or {})
        self.vocab_size: int = size
        # encode_batch_fast (tokenizers >= 0.21) skips offset tracking: ids only, faster.
        self._encode_ids = getattr(hf, "encode_batch_fast", hf.encode_batch)

    def __repr__(self) -> str:
        return f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size}, lowercase={self.lowercase})"

    # -- encoding ---------------------------------------------------------------------------------

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, no special tokens; encoded in parallel by Rust threads."""
        return [e.ids for e in self._encode_ids(list(texts), add_special_tokens=False)]

    def encode_grouped(self, groups: Sequence[Sequence[str]]) -> tuple[np.ndarray, np.ndarray]:
        """The ids of every text of every group back to back (int64), and each text's length.

        Equal to concatenating :meth:`encode_batch` of all the texts, but each group is encoded in
        one call, its texts joined by a marker: an added token, which the tokenizer cuts the text
        at before normalizing and pre-tokenizing, so every text is tokenized exactly as on its own.
        Many short texts (a document's sentences) cost a fifth less this way. The marker is a
        Unicode noncharacter; a batch in which some text contains it is encoded text by text.
        """
        groups = [list(group) for group in groups if group]
        joined = [_GROUP_MARKER.join(group) for group in groups]
        clean = all(text.count(_GROUP_MARKER) == len(group) - 1 for text, group in zip(joined, groups))
        if self._marked is None or not clean:
            ids = self.encode_batch([text for group in groups for text in group])
            return _flatten(ids), np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        hf, marker = self._marked
        encoded = [e.ids for e in getattr(hf, "encode_batch_fast", hf.encode_batch)(joined, add_special_tokens=False)]
        flat = _flatten(encoded)
        # Each text ends at a marker or at its group's end; at equal positions (an empty first
        # text) the previous group's end comes first. A text starts where the previous one
        # ended, one past it after a marker.
        markers = np.flatnonzero(flat == marker)
        ends = np.concatenate([np.cumsum(list(map(len, encoded)), dtype=np.int64), markers])
        after_marker = np.arange(len(ends)) >= len(encoded)
        order = np.lexsort((after_marker, ends))
        ends, after_marker = ends[order], after_marker[order]
        starts = np.concatenate([[0], ends[:-1] + after_marker[:-1]])
        return flat[flat != marker], ends - starts

    @functools.cached_property
    def _marked(self) -> tuple[tokenizers.Tokenizer, int] | None:
        """A copy of the tokenizer that knows the group marker, and the marker's id; None where
        grouping would change the ids: the vocabulary has the marker's string, or the tokenizer
        treats a text's start specially beyond what each piece gets (an imported Metaspace with
        ``prepend_scheme="first"`` marks only the whole text's first word), which a probe finds."""
        if self.hf.token_to_id(_GROUP_MARKER) is not None:
            return None
        hf = tokenizers.Tokenizer.from_str(self.hf.to_str())
        hf.encode_special_tokens = True
        hf.add_tokens([tokenizers.AddedToken(_GROUP_MARKER, normalized=False, special=False)])
        marker = hf.token_to_id(_GROUP_MARKER)
        grouped = [i for i in hf.encode(_GROUP_MARKER.join(_GROUPING_PROBE), add_special_tokens=False).ids
                   if i != marker]
        return (hf, marker) if grouped == [i for ids in self.encode_batch(_GROUPING_PROBE) for i in ids] else None

    def encode(self, text: str) -> list[int]:
        """Token ids of one text, no special tokens."""
        return self.hf.encode(text, add_special_tokens=False).ids

    def word_starts(self, texts: list[str]) -> list[list[bool]]:
        """Per token of ``encode_batch(texts)``: True where the token starts a new word.

        Words are the pre-tokenizer's words (bpe: GPT-2 regex chunks, so punctuation and each
        whitespace run are words of their own; wordpiece: BERT words, punctuation and each CJK
        character separate; unigram: whitespace-separated chunks, also ended after each "[" and
        "<"). For ``char`` a word is a run of
        adjacent letters/digits, except that every CJK character is a word of its own (jieba-based
        Chinese whole-word masking lives elsewhere).
        """
        texts = list(texts)
        encodings = self.hf.encode_batch(texts, add_special_tokens=False)
        if self.kind == "char":
            return [_char_word_starts(t, e.offsets) for t, e in zip(texts, encodings)]
        out = []
        for enc in encodings:
            starts, previous = [], object()
            for word in enc.word_ids:
                starts.append(word is None or word != previous)
                previous = word
            out.append(starts)
        return out

    def word_start_table(self) -> np.ndarray:
        """(vocab_size,) bool: True where a token, wherever it occurs, starts a word.

        Whole-word masking needs word boundaries per id, without the text the ids came from; the
        vocabulary strings carry them: wordpiece continuations start with ``##``
        (google-research/bert ``create_masked_lm_predictions``), unigram word starts with ``▁``,
        byte-level bpe word starts with a space byte (``Ġ``) or with punctuation / whitespace (a
        GPT-2 regex chunk of its own). So words here are whitespace-separated: unlike
        :meth:`word_starts`, a bpe letter run glued to punctuation or digits (``(hello``,
        ``10am``) stays one word, and a unigram word runs on across ``[``/``<``. For ``char``
        every token is a word (Latin letters cannot be told apart from the vocabulary; Chinese
        words come from ``prepare(..., segment="jieba")``). Special tokens count as starts.
        """
        table = np.ones(self.vocab_size, dtype=bool)
        if self.kind == "char":
            return table
        starts = {"wordpiece": lambda t: not t.startswith("##"),
                  "unigram": lambda t: t.startswith("▁"),
                  "bpe": _byte_level_starts_word}[self.kind]
        specials = self.special.all()
        for token, index in self.hf.get_vocab(with_added_tokens=False).items():
            table[index] = index in specials or starts(token)
        return table

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        """Readable text of ``ids`` (special tokens dropped unless ``skip_special=False``)."""
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=skip_special)

    # -- persistence ------------------------------------------------------------------------------

    def _json(self) -> str:
        return self.hf.to_str(pretty=True)

    def sha256(self) -> str:
        """Hex SHA-256 of the tokenizer.json content (a cache key for prepared data).

        Whether a special token takes the spaces beside it (lstrip / rstrip: RoBERTa's mask, and
        the one `export` gives a byte-level BPE's) does not count. ptmkit reads special strings in
        text as text (`encode_special_tokens`), so the flags change no id it encodes, and data
        prepared with a run's tokenizer fits the run exported and imported back (`hf:`)."""
        return hashlib.sha256(_without_strip_flags(self.hf).to_str(pretty=True).encode("utf-8")).hexdigest()

    def save(self, directory: Path | str) -> None:
        """Write ``directory/tokenizer.json`` and ``directory/ptmkit_tokenizer.json`` atomically."""
        directory = Path(directory)
        meta = {
            "version": 2 if self.imported else 1,
            "kind": self.kind,
            "lowercase": self.lowercase,
            "ptmkit_version": __version__,
            "tokenizers_version": tokenizers.__version__,
        }
        if self.imported:
            meta["special"] = {**{role: getattr(self.special, role) for role in ROLES},
                               "sentinels": list(self.special.sentinels)}
            meta["borrowed"] = self.borrowed
        try:
            directory.mkdir(parents=True, exist_ok=True)
            write_text_atomic(directory / TOKENIZER_FILE, self._json())
            write_text_atomic(directory / META_FILE, json.dumps(meta, indent=2) + "\n")
        except OSError as exc:
            raise UserError(
                f"cannot write the tokenizer: {exc.strerror or exc}",
                directory,
                "choose a writable output directory",
            ) from exc

    @classmethod
    def load(cls, directory: Path | str) -> Tokenizer:
        """Load a tokenizer saved by :meth:`save` (a directory, or its tokenizer.json)."""
        directory = Path(directory)
        if directory.name == TOKENIZER_FILE and directory.is_file():
            directory = directory.parent
        path = directory / TOKENIZER_FILE
        if not path.is_file():
            raise UserError(
                f"no {TOKENIZER_FILE} found", path, f"point at a directory written by `ptmkit tokenizer`, or {_RETRAIN}"
            )
        try:
            text = path.read_text(encoding="utf-8")
            config = json.loads(text)
            hf = tokenizers.Tokenizer.from_str(text)
        except Exception as exc:  # OSError, bad UTF-8/JSON, or the Rust side's plain Exception
            raise UserError(f"cannot read {TOKENIZER_FILE}: {exc}", path, _RETRAIN) from exc
        model_type = (config.get("model") or {}).get("type")
        model_kind = _MODEL_KIND.get(model_type)
        meta_path = directory / META_FILE
        meta = None
        if meta_path.is_file():
            try:
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
                kind, lowercase, version = meta["kind"], bool(meta["lowercase"]), int(meta["version"])
                special = _special_from_meta(meta.get("special"))
                borrowed = dict(meta.get("borrowed") or {})
            except (OSError, ValueError, TypeError, KeyError) as exc:
                raise UserError(f"cannot read {META_FILE}: {exc}", meta_path, _RETRAIN) from exc
        if meta is None or special is None:  # ptmkit's own layout: specials at 0..106
            problem = _special_problem(hf)
            if problem is not None:
                raise UserError(problem, path, f"ptmkit needs {ALL_SPECIAL_TOKENS[0]}..<extra_id_99> at ids 0..106; {_RETRAIN}")
        if model_kind is None:
            raise UserError(f"unsupported tokenizer model type {model_type!r}", path, _RETRAIN)
        if meta is not None:
            if version > FORMAT_VERSION:
                raise UserError(
                    f"{META_FILE} has format version {version}, newer than this ptmkit's {FORMAT_VERSION}",
                    meta_path,
                    "upgrade ptmkit",
                )
            if kind != model_kind:
                raise UserError(f"{META_FILE} says kind {kind!r} but {TOKENIZER_FILE} holds a {model_type} model", meta_path, _RETRAIN)
        else:  # a bare tokenizer.json: infer what we can
            kind, lowercase, special, borrowed = model_kind, _infers_lowercase(config), None, {}
        try:
            return cls(hf, kind, lowercase=lowercase, special=special, borrowed=borrowed)
        except ValueError as exc:  # special ids of the metadata outside the vocabulary
            raise UserError(f"{META_FILE} does not fit {TOKENIZER_FILE}: {exc}", meta_path, _RETRAIN) from exc

    @classmethod
    def from_hf(cls, directory: Path | str) -> Tokenizer:
        """The tokenizer of a Hugging Face model directory (``tokenizer.json``, plus the special
        tokens named in ``tokenizer_config.json`` / ``special_tokens_map.json``), ids unchanged.

        Only the ``tokenizers`` library is used (no ``transformers``, no network). Special ids
        come from :func:`hf_special_ids`.
        """
        directory = Path(directory)
        path = directory / TOKENIZER_FILE
        if not path.is_file():
            raise UserError(f"no {TOKENIZER_FILE} in the Hugging Face directory", directory,
                            "save the tokenizer there with `tokenizer.save_pretrained(DIR)` (a fast tokenizer)")
        try:
            text = path.read_text(encoding="utf-8")
            config = json.loads(text)
            hf = _canonical(tokenizers.Tokenizer.from_str(text))
        except Exception as exc:  # OSError, bad UTF-8/JSON, or the Rust side's plain Exception
            raise UserError(f"cannot read {TOKENIZER_FILE}: {exc}", path,
                            "point --init hf:DIR at a directory written by `save_pretrained`") from exc
        model_type = (config.get("model") or {}).get("type")
        kind = _MODEL_KIND.get(model_type)
        if kind is None:
            raise UserError(f"unsupported tokenizer model type {model_type!r}", path,
                            f"use a {', '.join(_MODEL_KIND)} tokenizer")
        special, borrowed = hf_special_ids(hf, _declared_special_tokens(directory))
        # A post-processor would add [CLS]/<s> ... behind our back; objectives add their own.
        hf.post_processor = None
        return cls(hf, kind, lowercase=_infers_lowercase(config), special=special, borrowed=borrowed)


# -- imported (Hugging Face) special tokens -------------------------------------------------------

_WELL_KNOWN = {"pad": ("[PAD]", "<pad>", "<|pad|>"), "unk": ("[UNK]", "<unk>", "<|unk|>"),
               "cls": ("[CLS]", "<cls>"), "sep": ("[SEP]", "<sep>"), "mask": ("[MASK]", "<mask>"),
               "bos": ("<s>", "<|startoftext|>", "<|endoftext|>"), "eos": ("</s>", "<|endoftext|>")}
"""Token strings taken for a role when no Hugging Face config file names one."""

_STAND_INS = {"cls": ("bos",), "bos": ("cls",), "sep": ("eos",), "eos": ("sep",),
              "unk": ("eos", "pad"), "pad": ("eos", "unk"), "mask": ("unk", "eos")}
"""Roles whose token stands in for a missing one, in order of preference: BERT frames with
[CLS]/[SEP] where BART and RoBERTa use <s>/</s>; GPT-2 pads with its end-of-text token."""

_SENTINEL = re.compile(r"^<extra_id_(\d+)>$")


def _token_text(value: object) -> str | None:
    """A special token as written in tokenizer_config.json (a string or an AddedToken dict)."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def _declared_special_tokens(directory: Path) -> dict[str, object]:
    """``<role>_token`` entries and extra special tokens from the directory's config files
    (``special_tokens_map.json`` wins over ``tokenizer_config.json``, as in transformers)."""
    declared: dict[str, object] = {}
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        file = directory / name
        if not file.is_file():
            continue
        try:
            values = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot read {name}: {exc}", file, "fix or remove the file") from exc
        if isinstance(values, dict):
            declared.update({k: v for k, v in values.items() if v is not None})
    return declared


def hf_special_ids(hf: tokenizers.Tokenizer, declared: dict[str, object]) -> tuple[SpecialIds, dict[str, str]]:
    """:class:`SpecialIds` of a Hugging Face tokenizer, and the roles it had to borrow.

    Each role takes the token its config names (``cls_token`` ...), else a well-known string in
    the vocabulary (``[CLS]``, ``<s>``, ``<|endoftext|>`` ...). A role still missing borrows the
    id of a stand-in role (``_STAND_INS``: cls <-> bos, sep <-> eos, pad <- eos as GPT-2 users do),
    and ``borrowed`` records it (``{"pad": "eos"}``) so that code needing a real token can refuse.
    Sentinels are the ``<extra_id_N>`` tokens (T5's), in N order, or none.
    """
    ids: dict[str, int] = {}
    for role in ROLES:
        token = _token_text(declared.get(f"{role}_token"))
        candidates = (token,) if token is not None else _WELL_KNOWN[role]
        for candidate in candidates:
            index = hf.token_to_id(candidate)
            if index is not None:
                ids[role] = index
                break
    if not ids:
        raise UserError("the tokenizer declares no special tokens (no pad, unk, cls, sep, mask, bos or eos)",
                        "tokenizer_config.json", "save the tokenizer with its special tokens set")
    borrowed: dict[str, str] = {}
    for role in ROLES:
        if role in ids:
            continue
        chain = list(_STAND_INS[role]) + [r for r in ROLES if r not in _STAND_INS[role]]
        donor = next(r for r in chain if r in ids)
        ids[role], borrowed[role] = ids[donor], borrowed.get(donor, donor)
    extra = declared.get("additional_special_tokens") or declared.get("extra_special_tokens") or []
    texts = [_token_text(t) for t in extra] if isinstance(extra, list) else []
    texts += [t for t in hf.get_vocab(with_added_tokens=True) if _SENTINEL.match(t)]
    numbered = {int(m.group(1)): t for t in texts if t and (m := _SENTINEL.match(t))}
    sentinels = tuple(hf.token_to_id(numbered[n]) for n in sorted(numbered)
                      if hf.token_to_id(numbered[n]) is not None)
    return SpecialIds(*(ids[role] for role in ROLES), sentinels=sentinels), borrowed


def _special_from_meta(values: object) -> SpecialIds | None:
    """The ``special`` entry of ``ptmkit_tokenizer.json`` (imported tokenizers), or None."""
    if values is None:
        return None
    if not isinstance(values, dict):
        raise TypeError("special must be a mapping of role to id")
    return SpecialIds(*(int(values[role]) for role in ROLES),
                      sentinels=tuple(int(i) for i in values.get("sentinels", [])))


def _infers_lowercase(config: dict) -> bool:
    normalizer = config.get("normalizer") or {}
    parts = normalizer.get("normalizers", [normalizer])
    return any(p.get("type") == "Lowercase" or (p.get("type") == "BertNormalizer" and p.get("lowercase")) for p in parts)


def _is_cjk(ch: str) -> bool:
    """CJK unified ideographs (the ranges BERT's handle_chinese_chars uses)."""
    cp = ord(ch)
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2B73F
        or 0x2B740 <= cp <= 0x2B81F
        or 0x2B820 <= cp <= 0x2CEAF
        or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
    )


def _gpt2_byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's ``bytes_to_unicode`` (openai/gpt-2 ``src/encoder.py``): printable
    Latin-1 bytes stand for themselves, the other bytes for chr(256 + k) in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{chr(b): b for b in printable}, **{chr(256 + k): b for k, b in enumerate(others)}}


_BYTE_OF = _gpt2_byte_decoder()


def _byte_level_starts_word(token: str) -> bool:
    """Whether a byte-level bpe token starts a word: it begins with whitespace (``Ġ`` = space)
    or punctuation. Letters and digits continue a word, and so does a token that begins inside
    a multi-byte character or whose first character is cut off (almost always a letter)."""
    # (a character outside the byte alphabet: a BPE that is not byte-level, taken as is)
    raw = b"".join(bytes([_BYTE_OF[c]]) if c in _BYTE_OF else c.encode() for c in token)
    first = raw.decode("utf-8", errors="replace")[:1] or "\ufffd"
    return first != "\ufffd" and not first.isalnum()  # U+FFFD: a character cut off


def _char_word_starts(text: str, offsets: list[tuple[int, int]]) -> list[bool]:
    starts: list[bool] = []
    prev_end, prev_wordish = -1, False
    for start, end in offsets:
        piece = text[start:end]
        wordish = bool(piece) and all(c.isalnum() and not _is_cjk(c) for c in piece)
        starts.append(not (wordish and prev_wordish and start == prev_end))
        prev_end, prev_wordish = end, wordish
    return starts


# -- training -------------------------------------------------------------------------------------


_NO_SPACE_BEFORE = (r"[\p{Han}\p{Hiragana}\p{Katakana}\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}"
                    r"\x{3000}-\x{303F}\x{FF00}-\x{FFEF}]")
"""A first character that takes no leading space (bpe): scripts written without spaces between
words, CJK punctuation and full-width forms (an Oniguruma class)."""


def _lowercased(first: normalizers.Normalizer, lowercase: bool) -> normalizers.Normalizer:
    return normalizers.Sequence([first, normalizers.Lowercase()]) if lowercase else first


def _build(kind: str, vocab_size: int, lowercase: bool, min_frequency: int, show_progress: bool):
    specials = list(ALL_SPECIAL_TOKENS)
    if kind == "bpe":
        hf = tokenizers.Tokenizer(models.BPE())
        # Lowercase first, then the GPT-2 leading space (see the module docstring).
        # (a Replace that inserts at an empty match panics in tokenizers: prepend, then take back)
        leading_space = [normalizers.Prepend(" "), normalizers.Replace(Regex(rf"\A (?={_NO_SPACE_BEFORE})"), "")]
        hf.normalizer = normalizers.Sequence(([normalizers.Lowercase()] if lowercase else []) + leading_space)
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        hf.decoder = decoders.Sequence([decoders.ByteLevel(), decoders.Strip(" ", 1, 0)])
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=show_progress,
        )
    elif kind == "wordpiece":
        hf = tokenizers.Tokenizer(models.WordPiece(unk_token="[UNK]"))
        hf.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
        )
        hf.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        hf.decoder = decoders.WordPiece(prefix="##")
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=specials,
            # the alphabet is chosen on a sample of the corpus before training (see `_alphabet`)
            continuing_subword_prefix="##",
            show_progress=show_progress,
        )
    elif kind == "unigram":
        hf = tokenizers.Tokenizer(models.Unigram())
        hf.normalizer = _lowercased(normalizers.NFKC(), lowercase)
        # Unigram's Viterbi would match the special pieces ("[MASK]", "<s>", ...) inside raw text,
        # so end a pre-token at every "[" and "<": no special piece can then start mid-pre-token.
        hf.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
                pre_tokenizers.Split(Regex("[\\[<]"), behavior="merged_with_previous"),
            ]
        )
        hf.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
        trainer = trainers.UnigramTrainer(
            vocab_size=vocab_size, special_tokens=specials, unk_token="[UNK]", show_progress=show_progress
        )
    else:  # char
        hf = tokenizers.Tokenizer(models.WordLevel(unk_token="[UNK]"))
        hf.normalizer = _lowercased(normalizers.NFC(), lowercase)
        hf.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex("."), behavior="isolated")]
        )
        hf.decoder = decoders.Fuse()
        trainer = trainers.WordLevelTrainer(
            vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials, show_progress=show_progress
        )
    return hf, trainer


ALPHABET_SAMPLE_CHARS = 20_000_000
"""How much of the corpus (its first characters) decides the size of a WordPiece alphabet."""


def _stands_alone(hf: tokenizers.Tokenizer, ch: str) -> bool:
    """Whether the normalizer and pre-tokenizer make `ch` a word of its own even between letters
    (a CJK ideograph, punctuation for BERT's pipeline): such a character never gets a "##" twin."""
    text = hf.normalizer.normalize_str(f"a{ch}a")
    return [piece for piece, _ in hf.pre_tokenizer.pre_tokenize_str(text)] == ["a", ch, "a"]


def _alphabet_sample(texts: Iterable[str], normalizer: normalizers.Normalizer
                     ) -> tuple[list[str], Counter[str]]:
    """The first texts of the stream, up to ALPHABET_SAMPLE_CHARS characters, and the counts of
    their characters as the trainer sees them (after normalization)."""
    sample: list[str] = []
    counts: Counter[str] = Counter()
    n_chars = 0
    for text in texts:
        sample.append(text)
        if isinstance(text, str):  # (a wrong type is reported by the stream that trains)
            counts.update(normalizer.normalize_str(text))
            n_chars += len(text)
        if n_chars >= ALPHABET_SAMPLE_CHARS:
            break
    for space in [ch for ch in counts if ch.isspace()]:
        del counts[space]
    return sample, counts


def _alphabet(hf: tokenizers.Tokenizer, counts: Counter[str], budget: int) -> tuple[list[str], int]:
    """The characters a WordPiece alphabet keeps within `budget` ordinary ids, and its size limit.

    A character missing from the alphabet turns every word containing it into [UNK], so
    characters come first, the most frequent first (ties by code point: the trainer would break
    them in hash order, so two trainings differed): one that can continue a word costs two ids
    (itself and its "##" twin, which the trainer adds and never drops), one that cannot costs
    one. Ids left over may go to characters the sample did not see, at two each, so the
    vocabulary never outgrows `budget`; merges fill the rest. (A flat half of the budget, as
    before, left 2,000 of Chinese Wikipedia's 4,400 characters out of a 4,000 vocabulary: 7.7%
    of hotel-review tokens were [UNK]; now 1.9%.)"""
    used, chosen = 0, []
    for ch, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        cost = 1 if _stands_alone(hf, ch) else 2
        if used + cost > budget:
            break
        used += cost
        chosen.append(ch)
    return chosen, len(chosen) + (budget - used) // 2


def _sorted_wordpiece(hf: tokenizers.Tokenizer) -> tokenizers.Tokenizer:
    """A WordPiece vocabulary with its ordinary entries numbered in string order after the
    specials. The trainer numbers its alphabet in hash-set order and ties between equally
    frequent merges as they come, so two trainings on the same text gave the same strings other
    ids (407 of 8,000 in the demo) and models started differently. WordPiece encodes by longest
    match over the set of strings, so which id each string has changes nothing else."""
    data = json.loads(hf.to_str())
    vocab = data["model"]["vocab"]
    special = {token["content"] for token in data.get("added_tokens", [])}
    ordinary = sorted(t for t in vocab if t not in special)
    for index, token in enumerate(ordinary, start=len(special)):
        vocab[token] = index
    return tokenizers.Tokenizer.from_str(json.dumps(data))


def _canonical(hf: tokenizers.Tokenizer) -> tokenizers.Tokenizer:
    """Round-trip through JSON until stable, so a trained tokenizer is bit-identical to its reload.

    The Rust JSON parser is not float-exact: unigram scores can move by one ulp on the first
    reload, which would change :meth:`Tokenizer.sha256` between training and ``load``.
    """
    text = hf.to_str(pretty=True)
    for _ in range(5):
        hf = tokenizers.Tokenizer.from_str(text)
        again = hf.to_str(pretty=True)
        if again == text:
            break
        text = again
    return hf


def _without_strip_flags(hf: tokenizers.Tokenizer) -> tokenizers.Tokenizer:
    """`hf`, or a copy whose special tokens take no spaces beside them (see `Tokenizer.sha256`)."""
    stripping = [t for t in hf.get_added_tokens_decoder().values() if t.special and (t.lstrip or t.rstrip)]
    if not stripping:
        return hf
    plain = tokenizers.Tokenizer.from_str(hf.to_str())
    plain.add_special_tokens([tokenizers.AddedToken(t.content, special=True, lstrip=False, rstrip=False,
                                                    single_word=t.single_word, normalized=t.normalized)
                              for t in stripping])
    return plain


def train_tokenizer(
    texts: Iterable[str],
    *,
    kind: str = "bpe",
    vocab_size: int = 8000,
    lowercase: bool | None = None,
    min_frequency: int = 2,
    show_progress: bool = True,
) -> Tokenizer:
    """Train a ``kind`` tokenizer of at most ``vocab_size`` ids (107 specials included) on ``texts``.

    ``texts`` is streamed once (any iterable, e.g. a generator over a huge file). ``lowercase``
    defaults to True for wordpiece and False otherwise. ``min_frequency`` is ignored by unigram.
    """
    if isinstance(texts, str):
        raise TypeError("train_tokenizer expects an iterable of texts, not one str")
    if kind not in KINDS:
        raise UserError(f"unknown tokenizer kind {kind!r}", "--kind", f"choose one of: {', '.join(KINDS)}")
    minimum = minimum_vocab_size(kind)
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < minimum:
        raise UserError(
            f"vocab size {vocab_size!r} is too small for a {kind} tokenizer",
            "--vocab-size",
            f"use --vocab-size {minimum} or more ({N_SPECIAL} ids are special tokens, "
            f"{MIN_ORDINARY[kind]} is the least room a {kind} vocabulary may have)",
        )
    if isinstance(min_frequency, bool) or not isinstance(min_frequency, int) or min_frequency < 1:
        raise UserError(f"min frequency {min_frequency!r} is not a positive integer", "--min-frequency", "use 1 or more")
    if lowercase is None:
        lowercase = kind == "wordpiece"
    hf, trainer = _build(kind, vocab_size, bool(lowercase), min_frequency, show_progress)
    if kind == "wordpiece":
        if not isinstance(texts, Sequence):
            texts = iter(texts)  # the sample is taken off the stream, then put back in front
        sample, counts = _alphabet_sample(texts, hf.normalizer)
        trainer.initial_alphabet, trainer.limit_alphabet = _alphabet(hf, counts, vocab_size - N_SPECIAL)
        if not isinstance(texts, Sequence):
            texts = itertools.chain(sample, texts)

    n_nonblank = 0

    def stream():
        nonlocal n_nonblank
        for text in texts:
            if not isinstance(text, str):
                raise TypeError(f"train_tokenizer expects str texts, got {type(text).__name__}")
            if text and not text.isspace():
                n_nonblank += 1
            yield text

    no_text = UserError(
        "no training text (the corpus is empty or only whitespace)",
        "tokenizer training corpus",
        "point the tokenizer at a non-empty text corpus",
    )
    length = len(texts) if isinstance(texts, Sequence) else None
    try:
        hf.train_from_iterator(stream(), trainer, length=length)
    except Exception as exc:
        if type(exc) is not Exception:  # the Rust trainer raises bare Exception; let others through
            raise
        if n_nonblank == 0:
            raise no_text from exc
        if "not large enough" in str(exc):  # unigram: the vocabulary must hold every character
            raise UserError(
                f"vocab size {vocab_size} cannot hold every distinct character of the corpus",
                "--vocab-size",
                "raise --vocab-size, or use --kind bpe (its 256-byte alphabet covers any text)",
            ) from exc
        raise
    if n_nonblank == 0:
        raise no_text

    if kind == "wordpiece":
        hf = _sorted_wordpiece(hf)
    hf = _canonical(hf)
    problem = _special_problem(hf)
    assert problem is None, f"{kind} trainer misplaced the special tokens: {problem}"
    actual = hf.get_vocab_size(with_added_tokens=True)
    if actual > vocab_size:  # unigram keeps every character even past vocab_size
        raise UserError(
            f"the {kind} vocabulary needs {actual} ids to hold every distinct character, more than --vocab-size {vocab_size}",
            "--vocab-size",
            f"raise --vocab-size ({actual} is certainly enough), or use --kind bpe",
        )
    return Tokenizer(hf, kind, lowercase=bool(lowercase))
