"""Pure, seeded noise primitives shared by the objectives (numpy only: they run in workers)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from ptmkit.data.shards import Window
from ptmkit.data.tokenizer import SpecialIds
from ptmkit.objectives.base import IGNORE, Vocab


def insert_before(tokens: np.ndarray, positions: np.ndarray, token_id: int) -> np.ndarray:
    """Insert `token_id` before each position (> 0) in `positions`: document separators."""
    positions = positions[positions > 0]
    return np.insert(tokens, positions, token_id) if len(positions) else tokens


def bert_frame(window: Window, special: SpecialIds, seq_len: int) -> np.ndarray:
    """[CLS] tokens [SEP], with [SEP] between packed documents, cut to `seq_len` ids: the frame
    of the encoder objectives, and the one downstream tasks build (`[CLS] a [SEP]`). Windows
    do not overlap, so the tokens a separator pushes past `seq_len` are never trained on: one
    per document start, a few per cent of a corpus of short documents."""
    body = insert_before(window.tokens, window.document_starts, special.sep)[: seq_len - 2]
    return np.concatenate([[special.cls], body, [special.sep]]).astype(np.int64)


def choose_positions(eligible: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Pick exactly max(1, round(fraction * #eligible)) eligible positions without replacement.

    A fixed count (BERT's `create_masked_lm_predictions`) rather than per-token coin flips keeps
    the number of predictions per sequence steady, which keeps batch shapes steady.
    """
    candidates = np.flatnonzero(eligible)
    if len(candidates) == 0:
        return candidates
    count = min(len(candidates), max(1, int(round(fraction * len(candidates)))))
    return np.sort(rng.choice(candidates, size=count, replace=False))


def corrupt(tokens: np.ndarray, positions: np.ndarray, vocab: Vocab, rng: np.random.Generator,
            mask_share: float = 0.8, random_share: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """BERT's 80/10/10: at each chosen position the input becomes [MASK], a random normal token,
    or stays, and the label is the original token; every other label is IGNORE."""
    inputs = tokens.copy()
    labels = np.full_like(tokens, IGNORE)
    labels[positions] = tokens[positions]
    draw = rng.random(len(positions))
    inputs[positions[draw < mask_share]] = vocab.special.mask
    swap = positions[(draw >= mask_share) & (draw < mask_share + random_share)]
    inputs[swap] = rng.integers(*vocab.ordinary_range, size=len(swap))
    return inputs, labels


def random_segmentation(num_items: int, num_segments: int, rng: np.random.Generator) -> np.ndarray:
    """Split `num_items` items into `num_segments` non-empty runs; all compositions equally likely.

    T5's `_random_segmentation` (t5/data/preprocessors.py): `num_segments - 1` cuts placed at
    distinct random gaps among the `num_items - 1` gaps between items.
    Requires `1 <= num_segments <= num_items`. Returns (num_segments,) positive ints summing to
    `num_items`.
    """
    cuts = np.sort(rng.choice(num_items - 1, size=num_segments - 1, replace=False)) + 1
    return np.diff(np.concatenate([[0], cuts, [num_items]]))


def span_counts(length: int, noise_density: float, mean_noise_span_length: float) -> tuple[int, int]:
    """(noise tokens, noise spans) that `random_spans_noise_mask` produces for `length` tokens.

    T5: `num_noise = clamp(round(length * noise_density), 1, length - 1)` and
    `num_spans = max(1, round(num_noise / mean_noise_span_length))` (`round` is half-to-even in
    both Python and `tf.round`). Sequences shorter than 2 tokens get no noise: T5 computes their
    mask for length 2 and cuts it to the real length, which leaves only the non-noise first token.
    The span count is also capped at the non-noise count so every non-noise span is non-empty (T5
    breaks there; unreachable at densities below 0.5).
    """
    if length < 2:
        return 0, 0
    num_noise = min(max(round(length * noise_density), 1), length - 1)
    num_spans = min(max(round(num_noise / mean_noise_span_length), 1), length - num_noise)
    return num_noise, num_spans


def random_spans_noise_mask(length: int, noise_density: float, mean_noise_span_length: float,
                            rng: np.random.Generator) -> np.ndarray:
    """T5's noise mask: `num_spans` noise runs interleaved with as many non-noise runs.

    Counts come from `span_counts`. Noise tokens and non-noise tokens are each split into
    `num_spans` non-empty runs by `random_segmentation`, and the runs alternate starting with
    non-noise: `[nn_0, n_0, nn_1, n_1, ...]`, so the mask always ends with noise (T5's
    `random_spans_noise_mask` without `random_roll`). Returns a (length,) bool array.
    """
    num_noise, num_spans = span_counts(length, noise_density, mean_noise_span_length)
    if num_spans == 0:
        return np.zeros(length, dtype=bool)
    noise = random_segmentation(num_noise, num_spans, rng)
    nonnoise = random_segmentation(length - num_noise, num_spans, rng)
    runs = np.stack([nonnoise, noise], axis=1).ravel()
    return np.repeat(np.arange(2 * num_spans) % 2 == 1, runs)


def poisson_pmf(lam: float) -> np.ndarray:
    """Poisson(lam) probabilities of 0, 1, ..., cut after the first one below 1e-7 (at most 128
    values) and renormalised: the span-length distribution of fairseq's `DenoisingDataset`."""
    pmf = [math.exp(-lam)]
    while pmf[-1] >= 1e-7 and len(pmf) < 128:
        pmf.append(pmf[-1] * lam / len(pmf))
    return np.array(pmf) / sum(pmf)


def poisson_span_lengths(budget: int, lam: float, rng: np.random.Generator) -> np.ndarray:
    """Span lengths ~ Poisson(lam) drawn until they add up to at least `budget`, the last one
    cut so the sum is exactly `budget` (fairseq `add_whole_word_mask`, span-poisson).

    Zero-length spans are kept: BART turns each into one inserted mask. Returns an int64 array
    (empty for a zero budget). Requires `lam > 0`.
    """
    lengths = np.zeros(0, dtype=np.int64)
    if budget == 0:
        return lengths
    pmf = poisson_pmf(lam)
    while lengths.sum() < budget:
        lengths = np.concatenate([lengths, rng.choice(len(pmf), size=budget, p=pmf)])
    total = np.cumsum(lengths)
    last = int(np.searchsorted(total, budget))  # first span reaching the budget
    lengths = lengths[: last + 1]
    lengths[last] = budget - (total[last - 1] if last else 0)
    return lengths


def segments_permuted(tokens: np.ndarray, starts: np.ndarray, fraction: float,
                      rng: np.random.Generator) -> np.ndarray:
    """Shuffle `ceil(n * fraction)` of the n segments (split before each of `starts`) among their
    own slots; the others stay in place (fairseq `permute_sentences`; fraction 1 = a uniformly
    random order). Start positions outside (0, len) are ignored. Same tokens, same length."""
    cuts = np.unique(starts[(starts > 0) & (starts < len(tokens))])
    segments = np.split(tokens, cuts)
    chosen = rng.permutation(len(segments))[: math.ceil(len(segments) * fraction)]
    order = np.arange(len(segments))
    order[chosen] = chosen[rng.permutation(len(chosen))]
    return np.concatenate([segments[i] for i in order])


def rotated(tokens: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The tokens started at a random offset and wrapped around (fairseq `add_rolling_noise`).

    The offset is uniform over 0..len inclusive, as in fairseq, so both ends give the unchanged
    sequence (probability 2 / (len + 1)).
    """
    return np.roll(tokens, -int(rng.integers(0, len(tokens) + 1)))


def word_groups(starts: np.ndarray, eligible: np.ndarray) -> np.ndarray:
    """Word index of every token (0, 1, ... in order), -1 for ineligible tokens.

    A word begins at an eligible token that starts a word, or that follows an ineligible one (a
    special token ends a word; a window may open mid-word), and takes the eligible non-starting
    tokens after it: google-research/bert `create_masked_lm_predictions` groups each `##` piece
    with the piece before it.
    """
    after_ineligible = np.concatenate([[True], ~eligible[:-1]])
    begins = eligible & (starts | after_ineligible)
    return np.where(eligible, np.cumsum(begins) - 1, -1)


def choose_whole_words(words: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Sorted positions of whole words covering at most max(1, round(fraction * #eligible)) tokens.

    google-research/bert `create_masked_lm_predictions` with `do_whole_word_mask`: the words are
    visited in random order, a word that would overflow the token budget is skipped, the visit
    stops once the budget is reached. So a word is always chosen whole, and the count is exact
    unless no remaining word fits. (BERT's budget also counts [CLS]/[SEP]; ours counts the
    eligible tokens, like `choose_positions`.) `words` as from `word_groups`.
    """
    sizes = np.bincount(words[words >= 0])
    budget = max(1, int(round(fraction * sizes.sum())))
    chosen, covered = [], 0
    for word in rng.permutation(len(sizes)):
        if covered >= budget:
            break
        if covered + sizes[word] <= budget:
            chosen.append(word)
            covered += sizes[word]
    return np.flatnonzero(np.isin(words, chosen))


_FLAG_FRAME = SpecialIds(*[1] * 7, sentinels=())
"""Framing per-token flags with `bert_frame` through these "special ids" lays them out exactly
like the tokens, with [CLS] and [SEP] counted as word starts."""


def bert_frame_word_starts(window: Window, vocab: Vocab, seq_len: int) -> np.ndarray:
    """`token_word_starts` laid out like `bert_frame(window, ...)`: bool per framed position."""
    flags = dataclasses.replace(window, tokens=token_word_starts(window, vocab).astype(np.int64))
    return bert_frame(flags, _FLAG_FRAME, seq_len).astype(bool)


def token_word_starts(window: Window, vocab: Vocab) -> np.ndarray:
    """Bool per token of `window`: True where a word starts, for whole-word noise.

    First match wins: the window's own flags (data prepared with a word segmenter), the
    vocabulary's per-id table (`Tokenizer.word_start_table`), else every token is a word.
    """
    if window.word_starts is not None:
        return np.asarray(window.word_starts, dtype=bool)
    if vocab.word_start is not None:
        return vocab.word_start[window.tokens]
    return np.ones(len(window.tokens), dtype=bool)
