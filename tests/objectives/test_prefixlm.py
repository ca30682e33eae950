"""Prefix LM: the mask, continuation-only labels, no leak into the prefix, training, and
fine-tuning features that read the whole input as the prefix."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ptmkit.errors import UserError
from ptmkit.model import masks
from ptmkit.model.config import resolve_model_config
from ptmkit.objectives import get_objective
from ptmkit.objectives.base import IGNORE


def prefix_of(example: dict) -> int:
    """P, read back from the labels: the first scored row is P - 1 (P = 0 and 1 are the same)."""
    return int(np.flatnonzero(example["labels"] != IGNORE)[0]) + 1


@pytest.mark.parametrize("length", [1, 2, 7])
def test_mask_edge_cases(length: int) -> None:
    assert (masks.prefix(length, 0) == masks.causal(length)).all()
    assert masks.prefix(length, length).all()
    for p in range(length + 1):
        allow = masks.prefix(length, p)
        assert allow[:p, :p].all(), "the prefix block is fully connected"
        assert not allow[:p, p:].any(), "no prefix row sees the continuation"
        assert (allow[p:, p:] == masks.causal(length - p)).all(), "the continuation is causal"


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # stateless fixtures
@given(st.integers(0, 2**32 - 1), st.floats(0.0, 1.0), st.floats(0.0, 1.0), st.integers(1, 3))
def test_labels_only_on_the_continuation(vocab, random_window, seed, a, b, n_docs) -> None:
    low, high = sorted((a, b))
    objective = get_objective("prefixlm")(vocab, 40, {"min_prefix": low, "max_prefix": high})
    causal = get_objective("clm")(vocab, 40)
    rng = np.random.default_rng(seed)
    window = random_window(rng, objective.window_length(), vocab, n_docs=n_docs)
    ex, plain = objective.make_example(window, rng), causal.make_example(window, rng)
    assert (ex["input_ids"] == plain["input_ids"]).all(), "the inputs are clm's"
    p = int(ex["attn_mask"][0].sum())  # row 0 sees the whole prefix (itself alone when P <= 1)
    assert round(low * 40) <= max(p, 1) and p <= max(round(high * 40), 1)
    assert (ex["labels"][: p - 1] == IGNORE).all(), "no label inside the prefix the mask shows"
    assert (ex["labels"][p - 1:] == plain["labels"][p - 1:]).all(), "row i predicts token i + 1"
    assert (ex["attn_mask"] == masks.prefix(40, p)).all()


def test_prefix_length_is_uniform_over_the_range(vocab, random_window) -> None:
    objective = get_objective("prefixlm")(vocab, 64)
    rng = np.random.default_rng(0)
    window = random_window(rng, objective.window_length(), vocab)
    lengths = [prefix_of(objective.make_example(window, rng)) for _ in range(3000)]
    assert min(lengths) == 16 and max(lengths) == 48
    counts = np.bincount(lengths)[16:]
    assert counts.min() > 0.5 * counts.mean()
    assert objective.predicted_fraction() == pytest.approx(0.5)
    batch = objective.collate([objective.make_example(window, rng) for _ in range(3)])
    assert batch["attn_mask"].shape == (3, 64, 64) and batch["attn_mask"].dtype == torch.bool


def test_continuation_tokens_never_reach_prefix_rows(vocab, random_window) -> None:
    objective = get_objective("prefixlm")(vocab, 24)
    torch.manual_seed(0)
    model = objective.build_model(resolve_model_config("tiny", vocab_size=vocab.size,
                                                       layout=objective.layout)).eval()
    rng = np.random.default_rng(0)
    ex = objective.make_example(random_window(rng, objective.window_length(), vocab), rng)
    p = prefix_of(ex)
    mask = torch.from_numpy(ex["attn_mask"])[None]

    def hidden(ids: np.ndarray) -> torch.Tensor:
        return model.encode(torch.from_numpy(ids)[None], attn_mask=mask)[0]

    base = hidden(ex["input_ids"])
    for m in (p, p + 3, 23):  # change one continuation token: rows before it are untouched
        changed = ex["input_ids"].copy()
        changed[m] = vocab.first_normal_id + (changed[m] + 1 - vocab.first_normal_id) % 800
        out = hidden(changed)
        assert torch.equal(out[:m], base[:m])
        assert not torch.allclose(out[m], base[m])
    changed = ex["input_ids"].copy()
    changed[p - 1] = vocab.first_normal_id  # a prefix token reaches every row, earlier ones too
    assert not torch.allclose(hidden(changed)[0], base[0])


def test_bad_prefix_range_is_a_user_error(vocab) -> None:
    with pytest.raises(UserError, match="prefix"):
        get_objective("prefixlm")(vocab, 64, {"min_prefix": 0.8, "max_prefix": 0.2})


@pytest.mark.parametrize("name, reads_ahead", [("prefixlm", True), ("clm", False)])
def test_downstream_features_read_the_input_as_a_prefix(vocab, name, reads_ahead) -> None:
    """Fine-tuning reads a prefix LM's input the way pre-training read its prefix, both ways;
    a causal LM's first state never sees a later token."""
    objective = get_objective(name)(vocab, 16)
    torch.manual_seed(0)
    model = objective.build_model(resolve_model_config("tiny", vocab_size=vocab.size,
                                                       layout=objective.layout)).eval()
    ids = torch.arange(vocab.first_normal_id, vocab.first_normal_id + 16)[None]
    valid = torch.ones_like(ids, dtype=torch.bool)
    valid[0, 12:] = False  # padding reaches no state either way
    changed, padded = ids.clone(), ids.clone()
    changed[0, 8] += 1
    padded[0, 14] += 1
    with torch.no_grad():
        base = objective.features(model, ids, valid)
        assert torch.equal(objective.features(model, padded, valid)[0, :12], base[0, :12])
        assert torch.equal(objective.features(model, changed, valid)[0, :8], base[0, :8]) != reads_ahead
