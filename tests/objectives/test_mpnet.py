"""MPNet: the permuted layout, `make_query_and_content_mask`, 80/10/10, and what the model sees."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ptmkit.model import masks
from ptmkit.model.config import resolve_model_config
from ptmkit.objectives import get_objective
from ptmkit.objectives.base import IGNORE, Vocab


def mpnet(vocab: Vocab, seq_len: int = 64, **options):
    return get_objective("mpnet")(vocab, seq_len, options)


def sample(objective, random_window, seed: int, n_docs: int = 1):
    rng = np.random.default_rng(seed)
    window = random_window(rng, objective.window_length(), objective.vocab, n_docs=n_docs)
    return objective.frame(window), objective.make_example(window, rng)


def keys(ids) -> set[int]:
    return set(np.flatnonzero(ids).tolist())


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 64), data=st.data())
def test_masks_give_every_row_each_position_once(n: int, data: st.DataObject) -> None:
    b = data.draw(st.integers(1, n), label="predicted")
    p = n - b
    content, query = masks.masked_permutation(n, b)
    assert content.shape == (n + b, n + b) and query.shape == (b, n + b)
    assert content.dtype == query.dtype == np.dtype(bool)
    z = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed")).permutation(n)
    positions = np.concatenate([z, z[p:]])  # of the keys: tokens, then the [MASK] placeholders
    context, placeholders = set(range(p)), set(range(n, n + b))

    for k in range(b):
        # the content of the non-predicted tokens and of the predicted ones earlier in the order,
        # and a placeholder for this and every later predicted position; never its own content
        assert keys(query[k]) == context | set(range(p, p + k)) | set(range(n + k, n + b))
        assert sorted(positions[query[k]].tolist()) == list(range(n)), "each position once"
        assert keys(content[p + k]) == context | set(range(p, p + k + 1)) | set(range(n + k + 1, n + b))
        assert sorted(positions[content[p + k]].tolist()) == list(range(n))
    for row in [*range(p), *placeholders]:  # non-predicted tokens and placeholders: BERT-like
        assert keys(content[row]) == context | placeholders
    assert not content[:p, p:n].any(), "non-predicted tokens never see predicted content"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seq_len=st.integers(3, 64), seed=st.integers(0, 2**32 - 1), n_docs=st.integers(1, 4),
       pred_ratio=st.floats(0.01, 0.99))
def test_examples_are_permuted_with_original_positions(vocab, random_window, seq_len: int,
                                                       seed: int, n_docs: int,
                                                       pred_ratio: float) -> None:
    objective = mpnet(vocab, seq_len, pred_ratio=pred_ratio)
    tokens, ex = sample(objective, random_window, seed, n_docs)
    n, b = seq_len, objective.num_targets()
    assert b == min(n, max(1, round(pred_ratio * n)))
    assert ex["input_ids"].shape == ex["position_ids"].shape == (n + b,)
    assert ex["query_ids"].shape == ex["query_position_ids"].shape == ex["labels"].shape == (b,)
    content, query = masks.masked_permutation(n, b)
    assert (ex["attn_mask"] == np.concatenate([content, query])).all()

    z, predicted = ex["position_ids"][:n], ex["query_position_ids"]
    assert sorted(z.tolist()) == list(range(n)), "a permutation of the original positions"
    assert (z[n - b:] == predicted).all() and (ex["position_ids"][n:] == predicted).all()
    assert (ex["input_ids"][:n] == tokens[z]).all(), "inputs are physically permuted"
    assert (ex["input_ids"][n:] == ex["query_ids"]).all(), "one corrupted copy in both streams"
    corrupted = ex["query_ids"]
    assert ((corrupted == vocab.special.mask) | (corrupted == tokens[predicted])
            | (corrupted >= vocab.first_normal_id)).all()

    special = np.isin(tokens, list(vocab.special.all()))
    labels = ex["labels"]
    real = labels != IGNORE  # the other rows only keep Lg fixed; their outputs are ignored
    assert real.sum() == min(b, (~special).sum())
    assert not special[predicted[real]].any(), "specials are never predicted"
    assert (labels[real] == tokens[predicted[real]]).all()


def test_fifteen_percent_predicted_with_80_10_10(vocab, random_window) -> None:
    objective = mpnet(vocab, 128)
    assert objective.num_targets() == round(0.15 * 128) == 19
    counts = dict(predicted=0, masked=0, kept=0, random=0)
    for seed in range(1000):
        tokens, ex = sample(objective, random_window, seed, n_docs=1 + seed % 3)
        original, inputs = tokens[ex["query_position_ids"]], ex["query_ids"]
        assert (ex["labels"] != IGNORE).sum() == 19
        counts["predicted"] += len(inputs)
        counts["masked"] += int((inputs == vocab.special.mask).sum())
        counts["kept"] += int((inputs == original).sum())
        counts["random"] += int(((inputs != vocab.special.mask) & (inputs != original)).sum())
    n = counts["predicted"]
    for kind, share in (("masked", 0.8), ("random", 0.1), ("kept", 0.1)):
        # a random replacement equal to the original (p = 1/vocab) counts as kept
        assert abs(counts[kind] / n - share) <= 4 * np.sqrt(share * (1 - share) / n), counts


def tiny_model(objective):
    torch.manual_seed(0)
    cfg = resolve_model_config("tiny", vocab_size=objective.vocab.size, layout=objective.layout)
    return objective.build_model(cfg).eval()


def moved(outputs: torch.Tensor) -> np.ndarray:
    """(B - 1, rows) bool: which rows of batch rows 1.. differ from batch row 0."""
    return ((outputs[1:] - outputs[:1]).abs().amax(-1) > 1e-5).numpy()


def test_model_predictions_see_earlier_predicted_content_only(vocab, random_window) -> None:
    objective = mpnet(vocab, 24, pred_ratio=0.25)
    n, b = 24, 6
    _, ex = sample(objective, random_window, seed=3)
    # batch row 0 is the example, row 1 + s the example with the content token at slot s
    # changed, row 1 + n + k the example with query input k changed
    batch = objective.collate([ex] * (1 + n + b))
    slots, rows = torch.arange(n), torch.arange(b)
    batch["input_ids"][1 + slots, slots] = (batch["input_ids"][1 + slots, slots] + 1) % vocab.size
    batch["query_ids"][1 + n + rows, rows] = (batch["query_ids"][1 + n + rows, rows] + 1) % vocab.size
    with torch.no_grad():
        h, g = objective.streams(tiny_model(objective), batch)
    h_moved, g_moved = moved(h), moved(g)
    p = n - b
    assert g_moved[:p].all(), "every prediction sees every non-predicted token"
    # predicted slot m: seen by the predictions after it, never by its own or earlier ones
    assert (g_moved[p:n] == np.less.outer(np.arange(b), np.arange(b))).all()
    assert not h_moved[p:n][:, np.r_[:p, n:n + b]].any(), \
        "non-predicted tokens and placeholders never see predicted content"
    # a query row is never a key: only its own output depends on its input
    assert (g_moved[n:] == np.eye(b, dtype=bool)).all() and not h_moved[n:].any()


def test_outputs_depend_only_on_token_and_original_position(vocab, random_window) -> None:
    """objectives.md §1.1: reorder the content rows (tokens, position ids, mask) any way and the
    query outputs stay the same, the content outputs move with their rows."""
    objective = mpnet(vocab, 32)
    n, b = 32, objective.num_targets()
    batch = objective.collate([sample(objective, random_window, seed)[1] for seed in range(2)])
    perm = torch.from_numpy(np.random.default_rng(0).permutation(n + b))
    rows = torch.cat([perm, torch.arange(n + b, n + 2 * b)])  # query rows stay last
    shuffled = {**batch, "input_ids": batch["input_ids"][:, perm],
                "position_ids": batch["position_ids"][:, perm],
                "attn_mask": batch["attn_mask"][:, rows][:, :, perm]}
    model = tiny_model(objective)
    with torch.no_grad():
        h, g = objective.streams(model, batch)
        h2, g2 = objective.streams(model, shuffled)
        torch.testing.assert_close(g2, g, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(h2, h[:, perm], atol=1e-5, rtol=1e-5)
        swapped = {**batch, "position_ids": batch["position_ids"][:, torch.arange(n + b).roll(1)]}
        assert not torch.allclose(g, objective.streams(model, swapped)[1]), "positions reach the outputs"


def test_throughput_counts_the_permuted_tokens_only(vocab, random_window) -> None:
    objective = mpnet(vocab, 32)
    batch = objective.collate([sample(objective, random_window, seed)[1] for seed in range(3)])
    assert objective.input_tokens(batch) == 3 * 32
