from __future__ import annotations

import numpy as np
import pytest

from ptmkit.data.shards import Window
from ptmkit.data.tokenizer import SPECIAL_TOKENS, N_SENTINELS, SpecialIds
from ptmkit.objectives.base import Vocab

SPECIAL = SpecialIds(pad=0, unk=1, cls=2, sep=3, mask=4, bos=5, eos=6,
                     sentinels=tuple(range(len(SPECIAL_TOKENS), len(SPECIAL_TOKENS) + N_SENTINELS)))


@pytest.fixture
def vocab() -> Vocab:
    return Vocab(size=1000, special=SPECIAL)


def _random_window(rng: np.random.Generator, length: int, vocab: Vocab, n_docs: int = 1) -> Window:
    """Ordinary tokens with a sentence boundary every 10 tokens and `n_docs` documents."""
    tokens = rng.integers(vocab.first_normal_id, vocab.size, size=length)
    sentences = np.arange(0, length, 10)
    documents = np.linspace(0, length, n_docs, endpoint=False).astype(int)
    return Window(tokens=tokens, sentence_starts=sentences, document_starts=documents)


@pytest.fixture
def random_window():
    return _random_window
