"""Statistics of BERT masking over many samples (tolerance: 4 binomial standard deviations)."""

from __future__ import annotations

import numpy as np
import torch

from ptmkit.model.config import resolve_model_config
from ptmkit.objectives import get_objective
from ptmkit.objectives.base import IGNORE


def within(p_hat: float, p: float, n: int) -> bool:
    return abs(p_hat - p) <= 4 * np.sqrt(p * (1 - p) / n)


def sample(vocab, random_window, n: int = 800, seq_len: int = 128, **options):
    objective = get_objective("mlm")(vocab, seq_len, options)
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        window = random_window(rng, objective.window_length(), vocab, n_docs=1 + i % 3)
        out.append((objective.frame(window), objective.make_example(window, rng)))
    return objective, out


def test_shapes_frame_and_specials(vocab, random_window) -> None:
    objective, examples = sample(vocab, random_window, n=50)
    for original, ex in examples:
        assert ex["input_ids"].shape == ex["labels"].shape == (128,)
        assert original[0] == vocab.special.cls and original[-1] == vocab.special.sep
        special = np.isin(original, list(vocab.special.all()))
        assert (ex["labels"][special] == IGNORE).all(), "special tokens are never selected"
        assert (ex["input_ids"][special] == original[special]).all()


def test_fifteen_percent_selected_and_80_10_10(vocab, random_window) -> None:
    _, examples = sample(vocab, random_window)
    selected = eligible = masked = random = kept = 0
    for original, ex in examples:
        chosen = ex["labels"] != IGNORE
        eligible += int((~np.isin(original, list(vocab.special.all()))).sum())
        selected += int(chosen.sum())
        assert (ex["labels"][chosen] == original[chosen]).all(), "labels are the original tokens"
        assert (ex["input_ids"][~chosen] == original[~chosen]).all(), "unselected inputs untouched"
        inputs = ex["input_ids"][chosen]
        masked += int((inputs == vocab.special.mask).sum())
        same = inputs == original[chosen]
        kept += int(same.sum())
        random += int(((inputs != vocab.special.mask) & ~same).sum())
    assert abs(selected / eligible - 0.15) < 0.005  # exact count per sequence, up to rounding
    # a random replacement equal to the original (p = 1/vocab) counts as kept
    assert within(masked / selected, 0.8, selected)
    assert within(random / selected, 0.1, selected)
    assert within(kept / selected, 0.1, selected)


def test_masking_is_dynamic_and_seeded(vocab, random_window) -> None:
    objective = get_objective("mlm")(vocab, 64)
    window = random_window(np.random.default_rng(3), objective.window_length(), vocab)
    a = objective.make_example(window, np.random.default_rng([0, 0, 7]))
    b = objective.make_example(window, np.random.default_rng([0, 0, 7]))
    c = objective.make_example(window, np.random.default_rng([0, 1, 7]))
    assert (a["labels"] == b["labels"]).all() and (a["input_ids"] == b["input_ids"]).all()
    assert (a["labels"] != c["labels"]).any(), "a new epoch draws a new mask"


def test_random_replacements_are_ordinary_tokens(vocab, random_window) -> None:
    _, examples = sample(vocab, random_window, n=200, mask_share=0.0, random_share=1.0)
    for original, ex in examples:
        chosen = ex["labels"] != IGNORE
        assert (ex["input_ids"][chosen] >= vocab.first_normal_id).all()


def test_documents_are_separated_by_sep(vocab, random_window) -> None:
    objective = get_objective("mlm")(vocab, 64)
    window = random_window(np.random.default_rng(0), objective.window_length(), vocab, n_docs=3)
    framed = objective.frame(window)
    assert len(framed) == 64
    assert (framed == vocab.special.sep).sum() == 3  # two separators + the final one


def test_loss_projects_only_selected_rows(vocab, random_window) -> None:
    objective, examples = sample(vocab, random_window, n=4, seq_len=32)
    batch = objective.collate([ex for _, ex in examples])
    cfg = resolve_model_config("tiny", vocab_size=vocab.size, layout="bert")
    model = objective.build_model(cfg)
    seen = []
    project = model.lm_head.cross_entropy
    model.lm_head.cross_entropy = lambda h, targets: (seen.append(h.shape[0]), project(h, targets))[1]
    loss, metrics = objective.loss(model, batch)
    assert seen == [int((batch["labels"] != IGNORE).sum())]
    assert metrics["predicted"] == seen[0]
    assert abs(float(loss.detach()) - np.log(vocab.size)) < 0.5
    loss.backward()
    assert model.embed.tokens.weight.grad is not None


def test_sparse_head_loss_equals_dense_head_loss(vocab, random_window) -> None:
    objective, examples = sample(vocab, random_window, n=4, seq_len=32)
    batch = objective.collate([ex for _, ex in examples])
    model = objective.build_model(resolve_model_config("tiny", vocab_size=vocab.size, layout="bert")).eval()
    sparse, _ = objective.loss(model, batch)
    logits = model.logits(model.encode(batch["input_ids"]))  # every row projected
    dense = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab.size), batch["labels"].reshape(-1),
                                             ignore_index=IGNORE)
    torch.testing.assert_close(sparse, dense, atol=1e-5, rtol=1e-5)
