"""ELMo biLM: sentence framing, direction leak test, padding, fresh loss, downstream layers, learning."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ptmkit.data.shards import Window
from ptmkit.model.bilm import BiLM
from ptmkit.model.config import resolve_model_config
from ptmkit.objectives import get_objective
from ptmkit.objectives.base import IGNORE, Vocab

V, L = 60, 12


@pytest.fixture(autouse=True)
def one_thread():
    """An LSTM is hundreds of tiny per-time-step ops: on a loaded machine, syncing two intra-op
    threads for each costs far more than it saves."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_bilm() -> BiLM:
    torch.manual_seed(0)
    return BiLM(V, dim=16, cells=32, layers=2, dropout=0.1).eval()


def ids(seed: int = 0, batch: int = 2, length: int = L) -> torch.Tensor:
    return torch.randint(10, V, (batch, length), generator=torch.Generator().manual_seed(seed))


def changed(a: torch.Tensor, b: torch.Tensor) -> list[int]:
    return torch.nonzero((a - b).abs().amax(dim=(0, 2)) > 1e-6).flatten().tolist()


def test_sentences_are_framed_and_labels_point_both_ways(vocab: Vocab) -> None:
    objective = get_objective("elmo")(vocab, 16)
    assert objective.window_length() == 14
    window = Window(tokens=np.arange(100, 114), sentence_starts=np.array([0, 5]),
                    document_starts=np.array([0]))
    ex = objective.make_example(window, np.random.default_rng(0))
    bos, eos = vocab.special.bos, vocab.special.eos
    assert ex["input_ids"].tolist() == [bos, *range(100, 105), eos, bos, *range(105, 112), eos]
    # the cut falls mid-sentence (token 112 follows): the final </s> is not a label
    assert ex["forward_labels"].tolist() == [*ex["input_ids"][1:-1], IGNORE, IGNORE]
    assert ex["backward_labels"].tolist() == [IGNORE, *ex["input_ids"][:-1]]


@pytest.mark.parametrize("starts", [[0, 5], [3], [0, 12], [2, 12], [0]])
def test_window_edges_are_labels_only_on_true_boundaries(vocab: Vocab, starts: list[int]) -> None:
    """A window cut mid-sentence has an outer <s> (or </s>) that no sentence put there."""
    objective = get_objective("elmo")(vocab, 16)
    window = Window(tokens=np.arange(100, 114), sentence_starts=np.array(starts),
                    document_starts=np.array([0]))
    ex = objective.make_example(window, np.random.default_rng(0))
    tokens = ex["input_ids"].tolist()
    bos, eos = vocab.special.bos, vocab.special.eos
    starts_a_sentence = ex["backward_labels"][1] == bos
    assert starts_a_sentence == (0 in starts)
    last_kept = tokens[-2] - 100  # the stream position of the last token before the final </s>
    assert ex["forward_labels"][-2] == (eos if last_kept + 1 in starts else IGNORE)
    inner = [i for i in range(1, len(tokens) - 1) if tokens[i] in (bos, eos)]
    assert all(ex["forward_labels"][i - 1] == tokens[i] for i in inner)  # inner boundaries stay labels
    assert all(ex["backward_labels"][i + 1] == tokens[i] for i in inner)


@pytest.mark.parametrize("start", range(1, 14))
def test_a_sentence_start_near_the_cut_leaves_no_empty_frame(vocab: Vocab, start: int) -> None:
    objective = get_objective("elmo")(vocab, 16)
    window = Window(tokens=np.arange(100, 114), sentence_starts=np.array([0, start]),
                    document_starts=np.array([0]))
    framed = objective.make_example(window, np.random.default_rng(0))["input_ids"].tolist()
    bos, eos = vocab.special.bos, vocab.special.eos
    assert len(framed) == 16 and framed[0] == bos and framed[-1] == eos
    pairs = [framed[i:i + 2] for i in range(len(framed) - 1)]
    assert [eos, eos] not in pairs and [bos, eos] not in pairs  # no empty sentence, no double end
    if start + 2 < 14:  # room for the pair and a token of the sentence: the boundary is kept
        assert framed[start + 1:start + 3] == [eos, bos] and framed[start + 3] == 100 + start


@pytest.mark.parametrize("start", range(1, 14))
def test_no_label_runs_from_one_sentence_into_the_next(vocab: Vocab, start: int) -> None:
    """Also where the cut leaves a sentence start without its </s> <s> pair (starts 12, 13 of
    a 14-token body): the labels across it are ignored, not taught as one sentence."""
    objective = get_objective("elmo")(vocab, 16)
    window = Window(tokens=np.arange(100, 114), sentence_starts=np.array([0, start]),
                    document_starts=np.array([0]))
    ex = objective.make_example(window, np.random.default_rng(0))
    sentence = {token: int(token - 100 >= start) for token in range(100, 114)}
    tokens = ex["input_ids"].tolist()
    for i, token in enumerate(tokens):
        for label in (ex["forward_labels"][i], ex["backward_labels"][i]):
            if token in sentence and label in sentence:
                assert sentence[token] == sentence[label], (i, token, label)
    assert (ex["forward_labels"] != IGNORE).sum() >= 11  # the labels inside each sentence stay


@pytest.mark.parametrize("m", [0, 5, L - 1])
def test_each_direction_sees_only_its_side(m: int) -> None:
    """Forward position k predicts token k+1, so it may depend on tokens <= k only; backward
    position k predicts token k-1 and may depend on tokens >= k only."""
    model, x = small_bilm(), ids()
    y = x.clone()
    y[:, m] = (y[:, m] + 1) % V
    with torch.no_grad():
        (fx, bx), (fy, by) = model.directions(x), model.directions(y)
    assert changed(fx, fy) == list(range(m, L))
    assert changed(bx, by) == list(range(0, m + 1))


def test_right_padding_does_not_change_real_positions() -> None:
    model, x = small_bilm(), ids(batch=1)
    padded = torch.cat([x, torch.zeros(1, 4, dtype=torch.long)], dim=1)
    valid = torch.arange(L + 4)[None] < L
    with torch.no_grad():
        alone, with_padding = model.layers(x), model.layers(padded, valid)
    for (f, b), (fp, bp) in zip(alone, with_padding):
        torch.testing.assert_close(fp[:, :L], f)
        torch.testing.assert_close(bp[:, :L], b)


def test_fresh_model_loss_is_near_uniform(vocab: Vocab, random_window) -> None:
    objective = get_objective("elmo")(vocab, 32)
    torch.manual_seed(0)
    model = objective.build_model(resolve_model_config("tiny", vocab_size=vocab.size, layout="prenorm"))
    rng = np.random.default_rng(0)
    batch = objective.collate([objective.make_example(random_window(rng, 30, vocab), rng) for _ in range(4)])
    loss, metrics = objective.loss(model, batch)
    assert abs(float(loss.detach()) - math.log(vocab.size)) < 0.05 * math.log(vocab.size)
    assert metrics["predicted"] == 2 * 4 * 31 - 4  # each window's cut is mid-sentence


def test_feature_layers_duplicate_the_token_layer(vocab: Vocab) -> None:
    objective = get_objective("elmo")(vocab, 32)
    model = objective.build_model(resolve_model_config("tiny", vocab_size=vocab.size, layout="prenorm")).eval()
    x = torch.randint(vocab.first_normal_id, vocab.size, (2, 9))
    valid = torch.ones_like(x, dtype=torch.bool)
    valid[1, 6:] = False
    with torch.no_grad():
        layers = objective.feature_layers(model, x, valid)
        top = objective.features(model, x, valid)
        short = objective.features(model, x[1:, :6], valid[1:, :6])
    assert len(layers) == 3 and all(h.shape == (2, 9, 256) for h in layers)
    embedded = model.embed(x)
    torch.testing.assert_close(layers[0][valid], torch.cat([embedded, embedded], dim=-1)[valid])
    torch.testing.assert_close(top, layers[-1])
    torch.testing.assert_close(top[1:, :6], short)  # padding and <s>/</s> framing are invisible
