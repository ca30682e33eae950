"""MASS: masked sequence-to-sequence pre-training (Song et al. 2019, arXiv 1905.02450).

Microsoft/MASS, XLM-based trainer (`restricted_mask_sent`, `shuffle_segments`, `mass_step`);
objectives.md §8. In `<s> text </s>` one contiguous fragment `x_u .. x_v` of
`k = round(span_ratio · len(text))` tokens is corrupted in the encoder input 80/10/10
([MASK] / random / kept, BERT's `noise.corrupt`); the decoder reads the clean fragment shifted
right, `x_{u-1} .. x_{v-1}` (so `<s>` when the fragment opens the text), at the original
positions `u-1 .. v-1`, and predicts `x_u .. x_v`; the loss covers only the fragment. The decoder
cross-attends only to encoder positions that are not [MASK] (`enc_mask = x1.ne(mask_index)` in
`mass_step`): randomised and kept fragment tokens stay visible, `<s>` and `</s>` always are.

Departures from the XLM code: `k` is computed per example from its own length (XLM uses the
padded batch length), the fragment never covers `</s>` (XLM's "end" placement can), and a window
packs consecutive documents with nothing between them, where XLM's examples are single sentences.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import Tensor

from ptmkit.errors import UserError
from ptmkit.objectives.base import Example, Window
from ptmkit.objectives.noise import corrupt
from ptmkit.objectives.seq2seq import Seq2SeqObjective, framed


def fragment_start(length: int, span_len: int, rng: np.random.Generator) -> int:
    """Where MASS's fragment of `span_len` tokens starts in a text of `length` tokens: at the
    start with probability 0.2, at the end with 0.2, uniformly anywhere otherwise (MASS
    `shuffle_segments`). Requires `0 <= span_len <= length`."""
    draw = rng.random()
    if draw >= 0.8:
        return 0
    if draw >= 0.6:
        return length - span_len
    return int(rng.integers(0, length - span_len + 1))


class Mass(Seq2SeqObjective):
    name = "mass"
    family = "denoising"

    @dataclass(kw_only=True)
    class Options:
        span_ratio: float = 0.5
        """Fraction of the text in the masked fragment (MASS --word_mass)."""
        mask_share: float = 0.8
        """Fragment tokens shown as [MASK] in the encoder (--word_mask_keep_rand 0.8,0.1,0.1)."""
        random_share: float = 0.1
        """Fragment tokens replaced by a random token; the rest are kept."""

        def __post_init__(self) -> None:
            if not 0 < self.span_ratio <= 1:
                raise UserError(f"span_ratio={self.span_ratio} is outside (0, 1]",
                                "objective_options.span_ratio", "use a fraction, e.g. 0.5")

    def window_length(self) -> int:
        return self.seq_len - 2  # <s> ... </s>

    def span_length(self, length: int) -> int:
        """round(span_ratio · length), at least one token of a non-empty text."""
        return min(length, max(1, round(self.options.span_ratio * length)))

    def make_example(self, window: Window, rng: np.random.Generator) -> Example:
        special = self.vocab.special
        tokens = framed(window.tokens, special.bos, special.eos, self.seq_len)
        k = self.span_length(len(tokens) - 2)
        u = 1 + fragment_start(len(tokens) - 2, k, rng)  # position in the frame, after <s>
        fragment = np.arange(u, u + k)
        inputs, _ = corrupt(tokens, fragment, self.vocab, rng,
                            self.options.mask_share, self.options.random_share)
        return {"input_ids": inputs, "decoder_input_ids": tokens[fragment - 1],
                "decoder_position_ids": fragment - 1, "labels": tokens[fragment]}

    def memory_keys(self, input_ids: Tensor) -> Tensor:
        return super().memory_keys(input_ids) & (input_ids != self.vocab.special.mask)

    def predicted_fraction(self) -> float:
        return self.options.span_ratio
