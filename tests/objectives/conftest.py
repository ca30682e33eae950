from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ptmkit.data.corpus import read_texts
from ptmkit.data.shards import TokenShards, Window, prepare
from ptmkit.data.tokenizer import OWN_SPECIAL_IDS, train_tokenizer
from ptmkit.model.config import resolve_model_config
from ptmkit.objectives.base import IGNORE, Objective, Vocab

SPECIAL = OWN_SPECIAL_IDS


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


@pytest.fixture(scope="session")
def lee_shards(tmp_path_factory: pytest.TempPathFactory) -> TokenShards:
    """Real English news (gensim's Lee corpus) as BPE-1000 shards with sentence boundaries."""
    import gensim  # slow to import: only for the tests that train
    lee = Path(gensim.__file__).parent / "test" / "test_data" / "lee_background.cor"
    tokenizer = train_tokenizer(read_texts([lee]), kind="bpe", vocab_size=1000, show_progress=False)
    out = tmp_path_factory.mktemp("lee") / "data"
    prepare([lee], tokenizer, out, progress=False)
    return TokenShards(out, "train")


def _train_briefly(objective: Objective, shards: TokenShards, steps: int = 30,
                   batch_size: int = 8, n_windows: int = 32) -> list[float]:
    """Losses of a tiny model (the objective's architecture and layout) trained `steps` AdamW
    steps at lr 2e-3 on a fixed set of `n_windows` real-text windows, noise drawn afresh.

    Runs on one thread: a model this small gains nothing from more, and threads that spin on a
    shared, loaded machine make the step many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train_steps(objective, shards, steps, batch_size, n_windows)
    finally:
        torch.set_num_threads(threads)


def _train_steps(objective: Objective, shards: TokenShards, steps: int, batch_size: int,
                 n_windows: int) -> list[float]:
    torch.manual_seed(0)
    cfg = resolve_model_config("tiny", vocab_size=objective.vocab.size, layout=objective.layout,
                               encoder_decoder=objective.architecture == "encoder_decoder")
    model = objective.build_model(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    windows = [shards.window(i, objective.window_length()) for i in range(n_windows)]
    rng = np.random.default_rng(0)
    losses = []
    for step in range(steps):
        chosen = [windows[(step * batch_size + j) % n_windows] for j in range(batch_size)]
        loss, _ = objective.loss(model, objective.collate([objective.make_example(w, rng) for w in chosen]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


@pytest.fixture
def train_briefly():
    return _train_briefly


def _padding_invariant(objective: Objective, examples: list[dict[str, np.ndarray]]) -> None:
    """Padding changes nothing: the loss of a ragged batch (eval mode, no dropout) equals the
    label-weighted mean of the examples' own losses, and padded label rows are ignored."""
    batch = objective.collate(examples)
    cfg = resolve_model_config("tiny", vocab_size=objective.vocab.size, layout=objective.layout,
                               encoder_decoder=objective.architecture == "encoder_decoder")
    model = objective.build_model(cfg).eval()
    with torch.no_grad():
        loss, metrics = objective.loss(model, batch)
        singles = [float(objective.loss(model, objective.collate([ex]))[0]) for ex in examples]
    weights = [int((ex["labels"] != IGNORE).sum()) for ex in examples]
    assert metrics["predicted"] == sum(weights)
    expected = sum(w * single for w, single in zip(weights, singles)) / sum(weights)
    assert abs(float(loss) - expected) < 1e-4


@pytest.fixture
def padding_invariant():
    return _padding_invariant
