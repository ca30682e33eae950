"""Every Transformer/LSTM objective learns: a tiny model's loss falls on real text, and padded
batches of the ragged (encoder-decoder) objectives score exactly like their examples alone."""

from __future__ import annotations

import numpy as np
import pytest

from ptmkit.objectives import OBJECTIVES, get_objective
from ptmkit.objectives.base import Vocab

SEQ_LEN = {"elmo": 32}  # the LSTM is slow on CPU: shorter windows keep the test quick


@pytest.mark.parametrize("name", sorted(n for n, cls in OBJECTIVES.items() if not cls.standalone))
def test_tiny_model_learns_on_real_text(name: str, lee_shards, train_briefly) -> None:
    objective = get_objective(name)(Vocab.of(lee_shards.tokenizer()), SEQ_LEN.get(name, 64))
    losses = train_briefly(objective, lee_shards)
    assert np.mean(losses[-5:]) <= 0.95 * np.mean(losses[:5]), losses


@pytest.mark.parametrize("name", ["bart", "mass", "t5"])
def test_padded_batch_loss_equals_per_example_losses(name: str, vocab, random_window, padding_invariant) -> None:
    objective = get_objective(name)(vocab, 32)
    rng = np.random.default_rng(0)
    padding_invariant(objective, [objective.make_example(random_window(rng, n, vocab), rng) for n in (30, 17, 5)])
