"""BERT / RoBERTa masked language modelling.

15% of the non-special tokens are selected afresh every time a window is seen (RoBERTa's dynamic
masking); 80% become [MASK], 10% a random token, 10% stay. The loss, and the vocabulary
projection, are computed only at the selected positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import Tensor, nn

from ptmkit.objectives.base import IGNORE, Batch, Example, Objective, Window, rows_cross_entropy
from ptmkit.objectives.noise import bert_frame, choose_positions, corrupt


class MaskedLM(Objective):
    name = "mlm"
    architecture = "encoder"
    layout = "bert"
    family = "AE"
    loss_over_labels = True

    @dataclass(kw_only=True)
    class Options:
        mask_prob: float = 0.15
        """Fraction of non-special tokens predicted."""
        mask_share: float = 0.8
        random_share: float = 0.1

    def window_length(self) -> int:
        return self.seq_len - 2  # [CLS] ... [SEP]

    def frame(self, window: Window) -> np.ndarray:
        return bert_frame(window, self.vocab.special, self.seq_len)

    def make_example(self, window: Window, rng: np.random.Generator) -> Example:
        tokens = self.frame(window)
        eligible = ~np.isin(tokens, list(self.vocab.special.all()))
        positions = self.select(window, eligible, rng)
        inputs, labels = corrupt(tokens, positions, self.vocab, rng,
                                 self.options.mask_share, self.options.random_share)
        return {"input_ids": inputs, "labels": labels}

    def select(self, window: Window, eligible: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Framed positions to predict: `mask_prob` of the eligible ones, token by token (whole-word
        masking overrides this)."""
        return choose_positions(eligible, self.options.mask_prob, rng)

    def loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        selected = batch["labels"] != IGNORE  # only these rows go through the last layer
        rows = model.encode(batch["input_ids"], select=selected)
        return rows_cross_entropy(model, rows, batch["labels"][selected])

    def predicted_fraction(self) -> float:
        return self.options.mask_prob
