"""BART denoising autoencoder: reconstruct `<s> text </s>` from a noised copy.

Lewis et al. 2019 (arXiv 1910.13461) and fairseq `fairseq/data/denoising_dataset.py`
(`DenoisingDataset`); objectives.md §9. Five noises, applied in fairseq's order:

1. `sentence_permute` — shuffle `ceil(n · permute_ratio)` sentences among their slots;
2. one whole-word masking pass with a word budget `ceil(#word_starts · mask_ratio)`, as
   `token_mask` (one-word spans, each token → `<mask>`: fairseq `--replace-length -1`),
   `token_delete` (one-word spans deleted: `0`) or `text_infill` (Poisson(λ) spans, each → one
   `<mask>`, zero-length spans insert one `<mask>`: `1`) — so at most one of the three;
3. `document_rotate` — with probability `rotate_ratio` the text starts at a random token.

`<s>` and `</s>` are never touched: noise works on the text between them. Target = the original
frame; decoder input = the target with `</s>` moved to the front (fairseq `prev_output_tokens`);
the loss covers every target token. The default is the paper's final model: text infilling of
30% of the words with Poisson(3) spans plus permutation of all sentences.

Word starts (for the word budget and span extents, fairseq `mask_whole_word`) come from
`noise.token_word_starts`: segmenter flags in the window, else `Vocab.word_start`, else every
token starts a word.

Departures from fairseq: a window packs consecutive documents with nothing between them (as
RoBERTa's FULL-SENTENCES packs; fairseq's `--sample-break-mode complete_doc` keeps one document
per example, which pads short ones), so permutation and rotation can move text across a
document boundary; sentence boundaries come from the shard index (`Window.sentence_starts`,
documents start sentences too) instead of full-stop tokens; random replacements are ordinary
tokens, never special ones (fairseq draws from `[1, |V|)`); exactly as many masks are inserted
as there were zero-length spans (fairseq's `ceil(len · (k / len))` can add one more); a source
grown past `seq_len` by insertions is cut before its `</s>`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ptmkit.errors import UserError
from ptmkit.objectives.base import Example, Vocab, Window
from ptmkit.objectives.noise import (poisson_span_lengths, rotated, segments_permuted,
                                     token_word_starts)
from ptmkit.objectives.seq2seq import Seq2SeqObjective, TextFrame, framed, shifted_right

NOISES = ("token_mask", "token_delete", "text_infill", "sentence_permute", "document_rotate")
REPLACE_LENGTH = {"token_mask": -1, "token_delete": 0, "text_infill": 1}
"""fairseq `--replace-length` of each masking noise: -1 = mask every token, 0 = delete the span,
1 = replace the whole span by one mask."""


def place_spans(is_word_start: np.ndarray, lengths: np.ndarray,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Start one span per length at distinct random word starts (fairseq `add_whole_word_mask`).

    A span of length l covers l words: from its start up to, not including, the l-th following
    word start, or to the end of the text. Spans may overlap. Requires
    `len(lengths) <= is_word_start.sum()` and positive lengths. Returns (starts, ends), int64.
    """
    word_starts = np.flatnonzero(is_word_start)
    picked = rng.permutation(len(word_starts))[: len(lengths)]
    bounds = np.append(word_starts, len(is_word_start))
    ends = bounds[np.minimum(picked + lengths, len(word_starts))]
    return word_starts[picked].astype(np.int64), ends.astype(np.int64)


def _covered(length: int, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """(length,) bool: the union of the half-open ranges [starts, ends)."""
    delta = np.zeros(length + 1, dtype=np.int64)
    np.add.at(delta, starts, 1)
    np.add.at(delta, ends, -1)
    return np.cumsum(delta[:-1]) > 0


def replace_spans(tokens: np.ndarray, starts: np.ndarray, ends: np.ndarray, replace_length: int,
                  is_random: np.ndarray, vocab: Vocab, rng: np.random.Generator) -> np.ndarray:
    """Apply fairseq's `--replace-length` to the spans [starts, ends).

    -1: every covered token becomes `<mask>` (length kept); 0: covered tokens are deleted;
    1: each span's first token becomes `<mask>` and the rest are deleted, so a span whose start
    lies inside another span vanishes with it (as in fairseq). Tokens of the spans flagged in
    `is_random` get random ordinary ids instead of `<mask>` (fairseq `--mask-random`).
    """
    covered = _covered(len(tokens), starts, ends)
    if replace_length == 0:
        return tokens[~covered]
    source = np.where(covered, vocab.special.mask, tokens)
    randomised = _covered(len(tokens), starts[is_random], ends[is_random])
    source[randomised] = rng.integers(*vocab.ordinary_range, size=int(randomised.sum()))
    if replace_length == -1:
        return source
    inner = starts + 1 < ends
    return source[~_covered(len(tokens), starts[inner] + 1, ends[inner])]


def inserted(tokens: np.ndarray, count: int, random_ratio: float, vocab: Vocab,
             rng: np.random.Generator) -> np.ndarray:
    """`count` new tokens at distinct random positions of the result: `ceil(count · random_ratio)`
    random ordinary ids, the rest `<mask>` (fairseq `add_insertion_noise`)."""
    positions = rng.permutation(len(tokens) + count)[:count]
    n_random = math.ceil(count * random_ratio)
    out = np.full(len(tokens) + count, vocab.special.mask, dtype=np.int64)
    out[positions[:n_random]] = rng.integers(*vocab.ordinary_range, size=n_random)
    is_new = np.zeros(len(out), dtype=bool)
    is_new[positions] = True
    out[~is_new] = tokens
    return out


def whole_word_mask(tokens: np.ndarray, is_word_start: np.ndarray, lengths: np.ndarray,
                    replace_length: int, random_ratio: float, vocab: Vocab,
                    rng: np.random.Generator) -> np.ndarray:
    """BART's masking pass over the text between `<s>` and `</s>` (fairseq `add_whole_word_mask`).

    `lengths` are span lengths in words (ones for token masking / deletion, Poisson draws for
    text infilling); each zero-length span becomes one inserted token (`inserted`) after the
    others are applied. Each span is random-replaced with probability `random_ratio`.
    """
    n_inserts = int((lengths == 0).sum())
    starts, ends = place_spans(is_word_start, lengths[lengths > 0], rng)
    is_random = rng.random(len(starts)) < random_ratio
    source = replace_spans(tokens, starts, ends, replace_length, is_random, vocab, rng)
    return inserted(source, n_inserts, random_ratio, vocab, rng) if n_inserts else source


class Bart(Seq2SeqObjective):
    name = "bart"
    family = "denoising"

    @dataclass(kw_only=True)
    class Options:
        noise: list[str] = field(default_factory=lambda: ["text_infill", "sentence_permute"])
        """Any of token_mask, token_delete, text_infill (at most one of these three),
        sentence_permute, document_rotate; a list or a comma-separated string."""
        mask_ratio: float = 0.3
        """Fraction of words masked (fairseq --mask)."""
        poisson_lambda: float = 3.0
        """Mean text-infilling span length (the paper; fairseq issue #1899 used 3.5)."""
        random_ratio: float = 0.0
        """Share of spans replaced by random tokens instead of <mask> (fairseq --mask-random)."""
        permute_ratio: float = 1.0
        """Fraction of sentences shuffled by sentence_permute (fairseq --permute-sentences)."""
        rotate_ratio: float = 1.0
        """Probability that document_rotate rotates an example (fairseq --rotate)."""

        def __post_init__(self) -> None:
            if isinstance(self.noise, str):
                self.noise = [name.strip() for name in self.noise.split(",") if name.strip()]
            self.noise = list(dict.fromkeys(self.noise))  # each noise applies once anyway
            unknown = [name for name in self.noise if name not in NOISES]
            if unknown:
                raise UserError(f"unknown BART noise {', '.join(map(repr, unknown))}",
                                "objective_options.noise", f"use any of: {', '.join(NOISES)}")
            masking = [name for name in self.noise if name in REPLACE_LENGTH]
            if len(masking) > 1:
                raise UserError(f"BART noises {' and '.join(masking)} exclude each other",
                                "objective_options.noise", "keep one of token_mask, token_delete, "
                                "text_infill (they are one fairseq masking pass)")
            for key in ("mask_ratio", "random_ratio", "permute_ratio", "rotate_ratio"):
                if not 0 <= getattr(self, key) <= 1:
                    raise UserError(f"{key}={getattr(self, key)} is outside [0, 1]",
                                    f"objective_options.{key}", "use a fraction between 0 and 1")
            if self.poisson_lambda <= 0:
                raise UserError(f"poisson_lambda={self.poisson_lambda} is not positive",
                                "objective_options.poisson_lambda", "use a mean span length > 0, e.g. 3")

        @property
        def masking(self) -> str | None:
            """The enabled one of token_mask, token_delete, text_infill, if any."""
            return next((name for name in self.noise if name in REPLACE_LENGTH), None)

    def window_length(self) -> int:
        return self.seq_len - 2  # <s> ... </s>

    def text_frame(self) -> TextFrame:
        """`<s> source </s>` -> `<s> target </s>`, decoded from `</s>` (fairseq, HF BART)."""
        special = self.vocab.special
        return TextFrame((special.bos,), special.eos, (special.bos,), special.eos)

    def make_example(self, window: Window, rng: np.random.Generator) -> Example:
        special = self.vocab.special
        target = framed(window.tokens, special.bos, special.eos, self.seq_len)
        text = target[1:-1]
        is_word_start = token_word_starts(window, self.vocab)[: len(text)]
        starts = np.concatenate([window.sentence_starts, window.document_starts])
        # zero-length infilling spans insert masks, which can (rarely) grow the text past seq_len
        text = self.noised(text, is_word_start, starts, rng)[: self.seq_len - 2]
        source = np.concatenate([[special.bos], text, [special.eos]]).astype(np.int64)
        return {"input_ids": source, "decoder_input_ids": shifted_right(target, special.eos),
                "labels": target}

    def noised(self, text: np.ndarray, is_word_start: np.ndarray, sentence_starts: np.ndarray,
               rng: np.random.Generator) -> np.ndarray:
        """The enabled noises applied to the text between `<s>` and `</s>`, in fairseq's order.

        `is_word_start` (bool per token) travels with the tokens through sentence permutation.
        """
        o = self.options
        if "sentence_permute" in o.noise:
            order = segments_permuted(np.arange(len(text)), sentence_starts, o.permute_ratio, rng)
            text, is_word_start = text[order], is_word_start[order]
        if o.masking is not None:
            budget = math.ceil(is_word_start.sum() * o.mask_ratio)
            lengths = (poisson_span_lengths(budget, o.poisson_lambda, rng)
                       if o.masking == "text_infill" else np.ones(budget, dtype=np.int64))
            text = whole_word_mask(text, is_word_start, lengths, REPLACE_LENGTH[o.masking],
                                   o.random_ratio, self.vocab, rng)
        if "document_rotate" in o.noise and rng.random() < o.rotate_ratio:
            text = rotated(text, rng)
        return text
