"""What XLNet's permutation LM and MPNet share: framing, target choice, the example and the loss.

Both use the backbone's two-stream attention (objectives.md §1, family "two-stream";
`Transformer.two_stream`): a content stream over the real tokens and one query-stream row per
target, which knows the target's position but not its token. Only the query rows are projected
onto the vocabulary, so the cost of the head scales with the number of targets.

Every example has the same shapes for a given objective and seq_len, so the default collate
stacks them. Keys (Lh content rows, Lg query rows = targets):
  input_ids (Lh,), position_ids (Lh,), query_ids (Lg,), query_position_ids (Lg,),
  attn_mask (Lh + Lg, Lh) bool, the content mask stacked on the query mask, and labels (Lg,).
"""

from __future__ import annotations

import numpy as np
from torch import Tensor, nn

from ptmkit.objectives.base import IGNORE, Batch, Example, Objective, Window, token_cross_entropy
from ptmkit.objectives.noise import bert_frame


def target_count(length: int, fraction: float) -> int:
    """max(1, round(fraction * length)), at most `length`: a fixed number of query rows per
    example (XLNet `num_predict`, MPNet `pred_size`), computed from the framed length."""
    return min(length, max(1, round(fraction * length)))


def draw(candidates: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` of the True positions of `candidates` (all of them if fewer), without
    replacement and in a uniformly random order."""
    return rng.permutation(np.flatnonzero(candidates))[:max(0, count)]


def fill_rows(targets: np.ndarray, length: int, count: int) -> np.ndarray:
    """`targets` followed by as many other positions as it takes to make `count` query rows.

    Only a window made almost entirely of document separators has fewer targets than slots;
    XLNet pads `target_mapping` with empty rows in the same situation (functional tokens taking
    target slots). A fixed Lg keeps examples stackable; `labels` ignores the fill rows.
    """
    missing = count - len(targets)
    if missing <= 0:
        return targets
    return np.concatenate([targets, np.setdiff1d(np.arange(length), targets)[:missing]])


def two_stream_example(inputs: np.ndarray, positions: np.ndarray, query_ids: np.ndarray,
                       query_positions: np.ndarray, attn_mask: np.ndarray, labels: np.ndarray) -> Example:
    """The example dict in the layout `TwoStreamObjective.loss` reads (see the module doc)."""
    return {"input_ids": inputs.astype(np.int64), "position_ids": positions.astype(np.int64),
            "query_ids": query_ids.astype(np.int64),
            "query_position_ids": query_positions.astype(np.int64),
            "attn_mask": attn_mask.astype(bool), "labels": labels.astype(np.int64)}


class TwoStreamObjective(Objective):
    """Base of PLM and MPNet: the `[CLS] tokens [SEP]` frame and the query-row loss.

    The frame is the one downstream tasks build (`[CLS] a [SEP]`, pooled at [CLS]), so the
    content stream, a plain bidirectional encoder at fine-tuning time (`Objective.features`),
    sees the same layout in pre-training. Special tokens are never targets.
    """

    architecture = "two_stream"
    family = "permuted"
    loss_over_labels = True

    def window_length(self) -> int:
        return self.seq_len - 2  # [CLS] ... [SEP]

    def frame(self, window: Window) -> np.ndarray:
        return bert_frame(window, self.vocab.special, self.seq_len)

    def eligible(self, tokens: np.ndarray) -> np.ndarray:
        """(L,) bool: the tokens that may be targets (every non-special token)."""
        return ~np.isin(tokens, list(self.vocab.special.all()))

    def labels(self, tokens: np.ndarray, rows: np.ndarray, n_targets: int) -> np.ndarray:
        """The original token at the first `n_targets` query rows, IGNORE at the fill rows
        after them (see `fill_rows`)."""
        return np.where(np.arange(len(rows)) < n_targets, tokens[rows], IGNORE)

    def num_targets(self) -> int:
        """Query rows per example (Lg)."""
        raise NotImplementedError

    def streams(self, model: nn.Module, batch: Batch) -> tuple[Tensor, Tensor]:
        """Content (B, Lh, H) and query (B, Lg, H) outputs of the two-stream backbone."""
        return model.two_stream(batch["input_ids"], batch["position_ids"], batch["query_ids"],
                                batch["query_position_ids"], batch["attn_mask"])

    def loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        return token_cross_entropy(model, self.streams(model, batch)[1], batch["labels"])

    def predicted_fraction(self) -> float:
        return self.num_targets() / self.seq_len
