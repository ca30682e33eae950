"""Pure, seeded noise primitives shared by the objectives (numpy only: they run in workers)."""

from __future__ import annotations

import numpy as np

from ptmkit.objectives.base import IGNORE, Vocab


def insert_before(tokens: np.ndarray, positions: np.ndarray, token_id: int) -> np.ndarray:
    """Insert `token_id` before each position (> 0) in `positions`: document separators."""
    positions = positions[positions > 0]
    return np.insert(tokens, positions, token_id) if len(positions) else tokens


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
    inputs[swap] = rng.integers(vocab.first_normal_id, vocab.size, size=len(swap))
    return inputs, labels
