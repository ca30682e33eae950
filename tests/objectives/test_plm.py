"""XLNet PLM: target choice, the `_local_perm` order, its two-stream masks, and what the model sees."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ptmkit.model import masks
from ptmkit.model.config import resolve_model_config
from ptmkit.objectives import get_objective
from ptmkit.objectives.base import IGNORE, Vocab
from ptmkit.objectives.plm import factorisation_ranks, xlnet_spans

WITH_FIXTURES = settings(max_examples=60, deadline=None,
                         suppress_health_check=[HealthCheck.function_scoped_fixture])


def plm(vocab: Vocab, seq_len: int = 64, **options):
    return get_objective("plm")(vocab, seq_len, options)


def sample(objective, random_window, seed: int, n_docs: int = 1):
    rng = np.random.default_rng(seed)
    window = random_window(rng, objective.window_length(), objective.vocab, n_docs=n_docs)
    return objective.frame(window), objective.make_example(window, rng)


def runs(chosen: np.ndarray) -> list[tuple[int, int]]:
    """(start, length) of each maximal run of True."""
    edges = np.diff(np.concatenate([[0], chosen.astype(int), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return list(zip(starts.tolist(), (ends - starts).tolist()))


@settings(max_examples=200, deadline=None)
@given(length=st.integers(1, 64), seed=st.integers(0, 2**32 - 1))
def test_local_perm_masks_follow_the_order(length: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    functional = rng.random(length) < 0.2
    target = ~functional & (rng.random(length) < 0.3)
    context = ~functional & ~target
    rank = factorisation_ranks(target, functional, rng)
    content, query = masks.from_ranks(rank)
    assert content.shape == query.shape == (length, length)
    assert content.dtype == query.dtype == np.dtype(bool)

    # the order: all context first (one block), then targets and functional tokens one by one
    assert (rank[context] == -1).all()
    ordered = np.flatnonzero(~context)
    assert sorted(rank[ordered].tolist()) == list(range(len(ordered)))
    order = ordered[np.argsort(rank[ordered])].tolist()
    for step, i in enumerate(order):
        before = set(np.flatnonzero(context).tolist()) | set(order[:step])
        assert set(np.flatnonzero(query[i]).tolist()) == before, "query: exactly the earlier tokens"
        assert set(np.flatnonzero(content[i]).tolist()) == before | {i}
    assert content.diagonal().all(), "every content row sees itself"
    assert not query.diagonal().any(), "no query row sees its own content"
    assert content[:, context].all() and query[np.ix_(target, context)].all(), "context is seen by all"
    assert not content[np.ix_(context, ~context)].any(), "context never sees targets or [CLS]/[SEP]"
    t = np.flatnonzero(target)
    pairs = query[np.ix_(t, t)]
    assert (pairs ^ pairs.T | np.eye(len(t), dtype=bool)).all(), "targets form one total order"


@settings(max_examples=200, deadline=None)
@given(length=st.integers(1, 64), seed=st.integers(0, 2**32 - 1), k=st.floats(1, 8),
       max_span=st.integers(1, 5))
def test_xlnet_spans_start_at_word_starts_and_stay_short(length: int, seed: int, k: float,
                                                         max_span: int) -> None:
    rng = np.random.default_rng(seed)
    is_start = rng.random(length) < 0.6
    goal = int(rng.integers(0, length + 1))
    chosen = xlnet_spans(is_start, np.ones(length, dtype=bool), goal, k, max_span, rng)
    assert chosen.dtype == bool and chosen.sum() <= goal
    for start, size in runs(chosen):  # spans never touch: the right context is at least 1
        assert is_start[start] and size <= max_span
    eligible = rng.random(length) < 0.7
    assert not (xlnet_spans(is_start, eligible, goal, k, max_span, rng) & ~eligible).any()


@WITH_FIXTURES
@given(seq_len=st.integers(3, 64), seed=st.integers(0, 2**32 - 1), k=st.floats(1, 8),
       max_span=st.integers(1, 5), n_docs=st.integers(1, 4))
def test_examples_are_xlnet_two_stream_inputs(vocab, random_window, seq_len: int, seed: int,
                                              k: float, max_span: int, n_docs: int) -> None:
    objective = plm(vocab, seq_len, k=k, max_span=max_span)
    tokens, ex = sample(objective, random_window, seed, n_docs)
    n_targets = objective.num_targets()
    assert n_targets == min(seq_len, max(1, round(seq_len / k)))
    assert ex["input_ids"].shape == (seq_len,) and ex["query_ids"].shape == (n_targets,)
    assert ex["attn_mask"].shape == (seq_len + n_targets, seq_len) and ex["attn_mask"].dtype == bool
    assert all(ex[key].dtype == np.int64 for key in ex if key != "attn_mask")
    assert (ex["input_ids"] == tokens).all(), "the content stream reads the real tokens"
    assert (ex["position_ids"] == np.arange(seq_len)).all(), "XLNet keeps the original order"
    assert (ex["query_ids"] == vocab.special.mask).all()

    rows, labels = ex["query_position_ids"], ex["labels"]
    special = np.isin(tokens, list(vocab.special.all()))
    assert len(set(rows.tolist())) == n_targets
    real = labels != IGNORE  # the other rows only keep Lg fixed; their outputs are ignored
    targets = rows[real]
    assert real.sum() == min(n_targets, max(0, (~special).sum() - 1)), "one token stays context"
    assert not special[targets].any(), "specials are never targets"
    assert (labels[real] == tokens[targets]).all()

    content, query = ex["attn_mask"][:seq_len], ex["attn_mask"][seq_len:]
    context = ~special & ~np.isin(np.arange(seq_len), targets)
    assert content.diagonal().all()
    assert not content[np.ix_(context, targets)].any(), "context never sees a target"
    for row, t in zip(query[real], targets):
        assert not row[t], "a query row never sees its own content"
        assert (row == content[t] & (np.arange(seq_len) != t)).all(), "exactly the earlier tokens"
        assert row[context].all() and context.any(), "including all the context"


def test_targets_are_one_kth_and_xlnet_counts(vocab, random_window) -> None:
    assert plm(vocab, 512).num_targets() == 85, "XLNet: num_predict 85 of 512 with K = 6"
    objective = plm(vocab, 128)
    assert objective.num_targets() == round(128 / 6) == objective.predicted_fraction() * 128
    for seed in range(20):
        _, ex = sample(objective, random_window, seed, n_docs=1 + seed % 3)
        assert (ex["labels"] != IGNORE).sum() == 21


def test_spans_start_at_word_starts(vocab, random_window) -> None:
    word_start = np.arange(vocab.size) % 3 == 0  # a third of the ids start a word
    mean_run, at_start = {}, {}
    for max_span in (1, 5):
        objective = plm(dataclasses.replace(vocab, word_start=word_start), 128, max_span=max_span)
        sizes, starts = [], []
        for seed in range(100):
            tokens, ex = sample(objective, random_window, seed)
            for start, size in runs(np.isin(np.arange(128), ex["query_position_ids"])):
                sizes.append(size)
                starts.append(word_start[tokens[start]])
        mean_run[max_span], at_start[max_span] = np.mean(sizes), np.mean(starts)
    # spans of 1..5 tokens, p(n) ∝ 1/n (mean 2.2), from word starts, topped up with single
    # tokens; plain PLM: independent tokens, a third of them at word starts
    assert mean_run[5] > 1.6 and mean_run[1] < 1.3, mean_run
    assert at_start[5] > 0.6 and abs(at_start[1] - 1 / 3) < 0.1, at_start


def test_spans_follow_a_segmenters_word_starts_over_the_vocabularys(vocab, random_window) -> None:
    """Chinese data prepared with jieba carries its words in the window; the vocabulary (one id
    per character) says every token starts a word."""
    objective = plm(dataclasses.replace(vocab, word_start=np.ones(vocab.size, bool)), 128, max_span=5)
    at_start = []
    for seed in range(100):
        rng = np.random.default_rng(seed)
        window = random_window(rng, objective.window_length(), objective.vocab)
        flags = np.arange(len(window.tokens)) % 4 == 0  # four-token words
        ex = objective.make_example(dataclasses.replace(window, word_starts=flags), rng)
        framed = np.concatenate([[True], flags, [True]])  # [CLS] ... [SEP]
        targets = np.isin(np.arange(128), ex["query_position_ids"][ex["labels"] != IGNORE])
        at_start += [framed[start] for start, _ in runs(targets)]
    assert np.mean(at_start) > 0.6  # a quarter if the segmenter were ignored


def test_model_query_rows_see_exactly_the_earlier_tokens(vocab, random_window) -> None:
    objective = plm(vocab, 16, k=3, max_span=1)
    _, ex = sample(objective, random_window, seed=4)
    content, targets = ex["attn_mask"][:16], ex["query_position_ids"]
    assert len(targets) == 5
    # batch row 0 is the example, row 1 + j the example with the token at j changed
    batch = objective.collate([ex] * 17)
    changed = torch.arange(16)
    batch["input_ids"][1 + changed, changed] = (batch["input_ids"][1 + changed, changed] + 1) % vocab.size
    torch.manual_seed(0)
    cfg = resolve_model_config("tiny", vocab_size=vocab.size, layout=objective.layout)
    with torch.no_grad():
        h, g = objective.streams(objective.build_model(cfg).eval(), batch)
    h_moved = ((h[1:] - h[:1]).abs().amax(-1) > 1e-5).numpy()  # (16, 16): [j, i]
    g_moved = ((g[1:] - g[:1]).abs().amax(-1) > 1e-5).numpy()  # (16, 5): [j, target]
    # content row i sees j iff rank(j) <= rank(i), a transitive relation: no layer spreads the
    # change further; a query row sees only strictly earlier tokens, never its own
    assert (h_moved == content.T).all()
    assert (g_moved == (content[targets] & (np.arange(16) != targets[:, None])).T).all()
    assert not g_moved[targets, np.arange(5)].any(), "a target never sees its own token"
    context = ~np.isin(ex["input_ids"], list(vocab.special.all())) & ~np.isin(np.arange(16), targets)
    assert g_moved[context].all(), "every target sees all the context"
