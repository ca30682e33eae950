"""MPNet masked and permuted pre-training (Song et al. 2020, arXiv 2004.09297; objectives.md §7).

As the microsoft/MPNet fairseq fork (`tasks/masked_permutation_lm.py` collater, input mode
`mpnet`; `models/masked_permutation_net.py`): the framed sequence of n tokens is permuted and the
last b = round(pred_ratio * n) tokens of the order are predicted. The network input is
physically permuted and carries the original positions:

    input_ids    = [x_z1 .. x_zn | M_1 .. M_b]      (content stream, n + b rows)
    position_ids = [z_1  .. z_n  | z_p+1 .. z_n]
    query_ids    = [M_1 .. M_b],  query_position_ids = [z_p+1 .. z_n]

where M is the predicted tokens after 80/10/10 corruption ([MASK] / random / kept, MPNet's
`mask_perm`), the same copy in both streams. The masks are `make_query_and_content_mask`
(`masks.masked_permutation`): a prediction sees the non-predicted tokens, the predicted tokens
earlier in the order, and a [MASK] placeholder at every remaining predicted position, so it knows
the position of every token of the sentence (the "position compensation" that PLM lacks) but
never its own content. Loss: cross-entropy at the query rows.

Differences from the fork: the frame is `[CLS] tokens [SEP]` (MPNet: `<s> tokens`) and special
tokens are never predicted (MPNet permutes and may predict `<s>`); the permutation is over tokens,
not whole words; the backbone has learned absolute positions only (no `mpnet_rel_base` relative
bias). Position ids always come from `position_ids`, never from tensor indices (objectives.md §1.1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ptmkit.errors import UserError
from ptmkit.model import masks
from ptmkit.objectives.base import Batch, Example, Window
from ptmkit.objectives.noise import corrupt
from ptmkit.objectives.two_stream import (TwoStreamObjective, draw, fill_rows, target_count,
                                          two_stream_example)


class MPNet(TwoStreamObjective):
    name = "mpnet"

    @dataclass(kw_only=True)
    class Options:
        pred_ratio: float = 0.15
        """Fraction of the framed tokens predicted: the tail of the permutation (`--pred-prob`)."""
        mask_share: float = 0.8
        """Predicted tokens fed as [MASK] (1 - `--rand-prob` - `--keep-prob`)."""
        random_share: float = 0.1
        """Predicted tokens fed as a random ordinary token (`--rand-prob`); the rest are kept."""

        def __post_init__(self) -> None:
            if not 0 < self.pred_ratio < 1:
                raise UserError(f"pred_ratio={self.pred_ratio} is outside (0, 1)",
                                "objective_options.pred_ratio", "use a fraction, e.g. 0.15")
            if min(self.mask_share, self.random_share) < 0 or self.mask_share + self.random_share > 1:
                raise UserError(f"mask_share={self.mask_share} + random_share={self.random_share} "
                                "is not a split of 1", "objective_options",
                                "use non-negative shares summing to at most 1, e.g. 0.8 and 0.1")

    def num_targets(self) -> int:
        return target_count(self.seq_len, self.options.pred_ratio)

    def make_example(self, window: Window, rng: np.random.Generator) -> Example:
        tokens = self.frame(window)
        eligible = self.eligible(tokens)
        n, b = len(tokens), self.num_targets()
        targets = draw(eligible, b, rng)
        predicted = fill_rows(targets, n, b)  # in prediction order
        rest = rng.permutation(np.setdiff1d(np.arange(n), predicted))
        order = np.concatenate([rest, predicted])  # z: the permutation, predicted part last
        placeholders, _ = corrupt(tokens[predicted], np.arange(b), self.vocab, rng,
                                  self.options.mask_share, self.options.random_share)
        content, query = masks.masked_permutation(n, b)
        return two_stream_example(np.concatenate([tokens[order], placeholders]),
                                  np.concatenate([order, predicted]), placeholders, predicted,
                                  np.concatenate([content, query]),
                                  self.labels(tokens, predicted, len(targets)))

    def input_tokens(self, batch: Batch) -> int:
        """The n permuted tokens; the b appended placeholders are not text."""
        n = batch["input_ids"].shape[1] - batch["labels"].shape[1]
        return int((batch["input_ids"][:, :n] != self.vocab.special.pad).sum())
