"""XLNet permutation language modelling (Yang et al. 2019, arXiv 1906.08237; objectives.md §6).

A factorisation order is sampled per example and only its last part is predicted (partial
prediction): about 1/K of the framed tokens are targets, with XLNet's K = |z| / (|z| - c) = 6
(`num_predict` 85 of 512). The order and the two-stream masks follow zihangdai/xlnet
`data_utils.py`:

* targets: `_sample_mask` spans (`max_span` > 1) or uniformly random tokens (`max_span` 1),
  topped up with random single tokens to exactly `num_targets()`;
* order: `_local_perm` with perm_size = L. Context tokens (neither targets nor specials) all come
  first with one shared rank: they see each other both ways and never a target. Targets and
  special tokens (XLNet's "functional" [SEP]/[CLS]) follow in a uniformly random order; a
  content row sees everything not later in the order, a query row only what is strictly earlier.

One query-stream row per target (Lg = `num_targets()`, so the extra compute scales with the
targets): input the [MASK] embedding plus the target's position embedding, keys the content
stream. The content stream reads the real tokens, unmasked. Loss: cross-entropy at the query rows.

Deliberate differences from XLNet: learned absolute position embeddings (the shared backbone's)
instead of Transformer-XL relative encodings, and no memory, segment recurrence, relative segment
encoding or `bi_data`; the query stream starts from [MASK] + position instead of XLNet's
`mask_emb`; the frame is `[CLS] tokens [SEP]` (XLNet: `A [SEP] B [SEP] [CLS]`), the frame
downstream tasks use. Span lengths count tokens from a word start, as XLNet's released
`_sample_mask` does (the PR #16 bug the authors kept). Word starts are WWM's: the window's
segmenter flags (`prepare --segment jieba`), else the vocabulary's (`Vocab.word_start`), else
every token.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ptmkit.errors import UserError
from ptmkit.model import masks
from ptmkit.objectives.base import Example, Window
from ptmkit.objectives.noise import bert_frame_word_starts
from ptmkit.objectives.two_stream import (TwoStreamObjective, draw, fill_rows, target_count,
                                          two_stream_example)


def xlnet_spans(is_start: np.ndarray, eligible: np.ndarray, goal: int, k: float, max_span: int,
                rng: np.random.Generator) -> np.ndarray:
    """XLNet `_sample_mask`: spans of about 1/k of the tokens, at most `goal` of them.

    Repeat: draw a span length n in 1..max_span with p(n) ∝ 1/n (cut to the remaining goal), a
    context of `int(n * k)` tokens and a left context `l` uniform in [0, context); the span is the
    n tokens from the first word start at or after `cursor + l`; the cursor moves past the span
    and the rest of its context. Stops when the goal is met or no span fits before the end.
    Ineligible tokens inside a span are left out. Returns (L,) bool, at most `goal` True.
    """
    length = len(eligible)
    starts = np.flatnonzero(is_start)
    spans = np.arange(1, max_span + 1)
    probs = (1.0 / spans) / (1.0 / spans).sum()
    chosen = np.zeros(length, dtype=bool)
    cursor = 0
    while chosen.sum() < goal:
        n = min(int(rng.choice(spans, p=probs)), goal - int(chosen.sum()))
        context = int(n * k)
        left = int(rng.integers(context))
        i = np.searchsorted(starts, cursor + left)
        if i == len(starts) or starts[i] + n >= length:  # XLNet: `if end >= seg_len: break`
            break
        begin = starts[i]
        chosen[begin:begin + n] = eligible[begin:begin + n]
        cursor = begin + n + context - left
    return chosen


def factorisation_ranks(target: np.ndarray, functional: np.ndarray,
                        rng: np.random.Generator) -> np.ndarray:
    """XLNet `_local_perm` (perm_size = L) as ranks for `masks.from_ranks`.

    Context tokens (neither target nor functional) share rank -1: first in the order and visible
    to everyone. Targets and functional tokens get ranks 0..m-1 in a uniformly random order.
    Returns (L,) int64.
    """
    ordered = target | functional
    rank = np.full(len(target), -1, dtype=np.int64)
    rank[ordered] = rng.permutation(int(ordered.sum()))
    return rank


class PermutationLM(TwoStreamObjective):
    name = "plm"

    @dataclass(kw_only=True)
    class Options:
        k: float = 6.0
        """Partial-prediction constant K: round(seq_len / K) targets per example (XLNet: 6)."""
        max_span: int = 5
        """Longest target span in tokens (XLNet `max_gram`); 1 = plain PLM, targets drawn
        uniformly, i.e. the last 1/K of one uniformly random factorisation order."""

        def __post_init__(self) -> None:
            if self.k < 1:
                raise UserError(f"k={self.k} is below 1", "objective_options.k",
                                "use K >= 1 (1/K of the tokens are predicted), e.g. 6")
            if self.max_span < 1:
                raise UserError(f"max_span={self.max_span} is below 1", "objective_options.max_span",
                                "use 1 (single tokens) or more, e.g. 5")

    def num_targets(self) -> int:
        return target_count(self.seq_len, 1 / self.options.k)

    def choose_targets(self, is_start: np.ndarray, eligible: np.ndarray,
                       rng: np.random.Generator) -> np.ndarray:
        """(L,) bool: exactly min(num_targets(), #eligible - 1) eligible targets; spans begin
        where `is_start` (a word start) says.

        One eligible token always stays context: without memory (XLNet's Transformer-XL cache)
        the first target of an order with no context would have nothing to attend to.
        """
        goal, o = min(self.num_targets(), int(eligible.sum()) - 1), self.options
        chosen = np.zeros(len(eligible), dtype=bool)
        if o.max_span > 1:
            chosen = xlnet_spans(is_start, eligible, goal, o.k, o.max_span, rng)
        chosen[draw(eligible & ~chosen, goal - int(chosen.sum()), rng)] = True  # XLNet's top-up
        return chosen

    def make_example(self, window: Window, rng: np.random.Generator) -> Example:
        tokens = self.frame(window)
        eligible = self.eligible(tokens)
        # the window's segmenter flags (Chinese words) first, else the vocabulary's
        target = self.choose_targets(bert_frame_word_starts(window, self.vocab, self.seq_len), eligible, rng)
        content, query = masks.from_ranks(factorisation_ranks(target, ~eligible, rng))
        rows = fill_rows(np.flatnonzero(target), len(tokens), self.num_targets())
        # A fill row may have nothing to see (NaN); its output is ignored, so any key will do.
        attn_mask = masks.with_padding(np.concatenate([content, query[rows]]),
                                       np.ones(len(tokens), dtype=bool))
        return two_stream_example(tokens, np.arange(len(tokens)),
                                  np.full(len(rows), self.vocab.special.mask), rows, attn_mask,
                                  self.labels(tokens, rows, int(target.sum())))
