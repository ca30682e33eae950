"""T5 span corruption (Raffel et al. 2019, arXiv 1910.10683).

google-research/text-to-text-transfer-transformer `t5/data/preprocessors.py` (`span_corruption`,
`random_spans_noise_mask`, `noise_span_to_unique_sentinel`, `nonnoise_span_to_unique_sentinel`,
`random_spans_helper`); objectives.md §11. 15% of the tokens, in spans of mean length 3, are
cut out of the input; each span is replaced by one sentinel (the i-th span by
`vocab.special.sentinels[i]`), and the input ends with `</s>`. The target lists the spans, each
after its sentinel: `<sent_0> span_0 <sent_1> span_1 ... </s>`. The decoder input is the target
shifted right with the pad id as start token (T5's and Hugging Face's `decoder_start_token_id`).
The loss covers every target token.

Windows hold the *expanded* number of raw tokens (`expanded_length`), so that a corrupted input
fills `seq_len` exactly (T5: 568 raw tokens for 512 inputs and 114 targets).

Unlike T5, our backbone has learned absolute position embeddings, not T5's relative position
bias: the encoder reads positions `0..len(inputs)-1`, the decoder `0..len(targets)-1`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ptmkit.errors import UserError
from ptmkit.objectives.base import Example, Vocab, Window
from ptmkit.objectives.noise import random_spans_noise_mask, span_counts
from ptmkit.objectives.seq2seq import Seq2SeqObjective, TextFrame, shifted_right


def corrupted_lengths(length: int, noise_density: float,
                      mean_noise_span_length: float) -> tuple[int, int]:
    """(input length, target length) of span corruption of `length` raw tokens, EOS included:
    `length - noise + spans + 1` and `noise + spans + 1` (counts from `span_counts`)."""
    noise, spans = span_counts(length, noise_density, mean_noise_span_length)
    return length - noise + spans + 1, noise + spans + 1


def expanded_length(inputs_length: int, noise_density: float,
                    mean_noise_span_length: float) -> tuple[int, int]:
    """(raw tokens, target length): the most raw tokens whose corrupted input (sentinels and EOS
    included) still fits `inputs_length`, and the length of their target (T5
    `random_spans_helper` with one sentinel per span; 512, 0.15, 3.0 -> (568, 114))."""
    length = inputs_length - 1
    while corrupted_lengths(length + 1, noise_density, mean_noise_span_length)[0] <= inputs_length:
        length += 1
    return length, corrupted_lengths(length, noise_density, mean_noise_span_length)[1]


def _span_heads(noise_mask: np.ndarray) -> np.ndarray:
    """(L,) bool: the first token of each noise span."""
    return noise_mask & ~np.concatenate([[False], noise_mask[:-1]])


def sentinel_inputs(tokens: np.ndarray, noise_mask: np.ndarray,
                    sentinels: tuple[int, ...]) -> np.ndarray:
    """The tokens with each noise span replaced by one sentinel, the i-th span by `sentinels[i]`
    (T5 `noise_span_to_unique_sentinel`, with our ascending sentinel table)."""
    heads = _span_heads(noise_mask)
    out = np.where(heads, np.asarray(sentinels)[np.maximum(np.cumsum(heads) - 1, 0)], tokens)
    return out[heads | ~noise_mask].astype(np.int64)


def sentinel_targets(tokens: np.ndarray, noise_mask: np.ndarray,
                     sentinels: tuple[int, ...]) -> np.ndarray:
    """The noise spans, each after its sentinel: `<s_0> span_0 <s_1> span_1 ...`.

    This is what T5's `nonnoise_span_to_unique_sentinel` gives for masks that start with
    non-noise and end with noise, as `random_spans_noise_mask` always does from 2 tokens on; a
    mask without noise gives nothing (T5 would emit one sentinel standing for the whole text).
    """
    heads = _span_heads(noise_mask)
    return np.insert(tokens[noise_mask], np.flatnonzero(heads[noise_mask]),
                     np.asarray(sentinels[: int(heads.sum())], dtype=np.int64)).astype(np.int64)


class T5(Seq2SeqObjective):
    name = "t5"
    family = "denoising"

    @dataclass(kw_only=True)
    class Options:
        noise_density: float = 0.15
        """Fraction of the raw tokens cut out into spans."""
        mean_noise_span_length: float = 3.0
        """Mean span length; the number of spans is round(noise tokens / this)."""

        def __post_init__(self) -> None:
            if not 0 < self.noise_density < 1:
                raise UserError(f"noise_density={self.noise_density} is outside (0, 1)",
                                "objective_options.noise_density", "use a fraction, e.g. 0.15")
            if self.mean_noise_span_length < 1:
                raise UserError(f"mean_noise_span_length={self.mean_noise_span_length} is below 1",
                                "objective_options.mean_noise_span_length", "use 1 or more, e.g. 3")

    def __init__(self, vocab: Vocab, seq_len: int, options: dict[str, Any] | None = None) -> None:
        super().__init__(vocab, seq_len, options)
        o = self.options
        self.raw_length, self.target_length = expanded_length(self.seq_len, o.noise_density,
                                                              o.mean_noise_span_length)
        spans = span_counts(self.raw_length, o.noise_density, o.mean_noise_span_length)[1]
        if spans > len(self.vocab.special.sentinels):
            raise UserError(f"seq_len {self.seq_len} needs {spans} sentinels, the tokenizer has "
                            f"{len(self.vocab.special.sentinels)}", "--seq-len",
                            "use a shorter --seq-len or a longer mean_noise_span_length")

    def window_length(self) -> int:
        return self.raw_length

    def text_frame(self) -> TextFrame:
        """`source </s>` -> `target </s>`, decoded from the pad id (T5, HF)."""
        special = self.vocab.special
        return TextFrame((), special.pad, (), special.eos)

    def make_example(self, window: Window, rng: np.random.Generator) -> Example:
        special, o = self.vocab.special, self.options
        tokens = window.tokens.astype(np.int64)
        noise = random_spans_noise_mask(len(tokens), o.noise_density, o.mean_noise_span_length, rng)
        inputs = np.append(sentinel_inputs(tokens, noise, special.sentinels), special.eos)
        targets = np.append(sentinel_targets(tokens, noise, special.sentinels), special.eos)
        return {"input_ids": inputs, "decoder_input_ids": shifted_right(targets, special.pad),
                "labels": targets}

    def predicted_fraction(self) -> float:
        return self.target_length / self.seq_len
