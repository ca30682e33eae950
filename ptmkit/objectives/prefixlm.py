"""Decoder-only prefix LM (T5's "prefix LM" objective on the "prefix" architecture, Raffel et
al. arXiv 1910.10683; the mask of UniLM's seq2seq mode, Dong et al. arXiv 1905.03197).

Each window of `seq_len` inputs is split at a random point P: positions < P (the prefix) attend
to each other both ways, positions >= P attend to the prefix and causally to themselves
(`masks.prefix`). Only the continuation is scored: row i >= P - 1 predicts token i + 1, so row
P - 1, which sees the whole prefix, predicts the first continuation token. P is uniform over
the integers from round(min_prefix * seq_len) to round(max_prefix * seq_len); P = 0 is plain
causal LM, P = seq_len scores only the last row (the token after the window). Documents are
packed and separated by </s> exactly as in `clm`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import Tensor, nn

from ptmkit.errors import UserError
from ptmkit.model import masks
from ptmkit.objectives.base import IGNORE, Batch, Example, Window, rows_cross_entropy
from ptmkit.objectives.clm import CausalLM


class PrefixLM(CausalLM):
    name = "prefixlm"
    family = "AR"
    architecture = "prefix"

    @dataclass(kw_only=True)
    class Options:
        min_prefix: float = 0.25
        """Shortest prefix, as a fraction of seq_len."""
        max_prefix: float = 0.75
        """Longest prefix, as a fraction of seq_len."""

        def __post_init__(self) -> None:
            if not 0 <= self.min_prefix <= self.max_prefix <= 1:
                raise UserError(f"prefix fractions {self.min_prefix}..{self.max_prefix} are not "
                                "within 0..1 in order", "objective_options",
                                "use 0 <= min_prefix <= max_prefix <= 1")

    def prefix_length(self, rng: np.random.Generator) -> int:
        low, high = (int(round(f * self.seq_len)) for f in (self.options.min_prefix,
                                                              self.options.max_prefix))
        return int(rng.integers(low, high + 1))

    def make_example(self, window: Window, rng: np.random.Generator) -> Example:
        example = super().make_example(window, rng)
        prefix = self.prefix_length(rng)
        labels = example["labels"].copy()  # a view of the same ids as input_ids
        labels[: max(prefix - 1, 0)] = IGNORE
        return {**example, "labels": labels, "attn_mask": masks.prefix(self.seq_len, prefix)}

    def loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        selected = batch["labels"] != IGNORE  # the prefix's rows skip the last layer
        rows = model.encode(batch["input_ids"], attn_mask=batch["attn_mask"], select=selected)
        return rows_cross_entropy(model, rows, batch["labels"][selected])

    def predicted_fraction(self) -> float:
        return 1.0 - (self.options.min_prefix + self.options.max_prefix) / 2
