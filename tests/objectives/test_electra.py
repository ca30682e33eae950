"""ELECTRA: 85/15 masking, replaced-token labels, generator shape, gradient routing, training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ptmkit.model.backbone import Transformer
from ptmkit.model.config import resolve_model_config
from ptmkit.objectives import get_objective
from ptmkit.objectives.base import IGNORE, Vocab
from ptmkit.objectives.electra import generator_config, replace_with_samples


def within(p_hat: float, p: float, n: int) -> bool:
    return abs(p_hat - p) <= 4 * np.sqrt(p * (1 - p) / n)


def tiny(objective, vocab: Vocab):
    torch.manual_seed(0)
    return objective.build_model(resolve_model_config("tiny", vocab_size=vocab.size, layout="bert"))


def batch_of(objective, vocab: Vocab, random_window, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    windows = [random_window(rng, objective.window_length(), vocab) for _ in range(n)]
    return objective.collate([objective.make_example(w, rng) for w in windows])


def test_masking_is_85_mask_15_unchanged_never_random(vocab, random_window) -> None:
    objective = get_objective("electra")(vocab, 128)
    rng = np.random.default_rng(0)
    selected = masked = 0
    for _ in range(600):
        window = random_window(rng, objective.window_length(), vocab)
        original, ex = objective.frame(window), objective.make_example(window, rng)
        chosen = ex["labels"] != IGNORE
        assert chosen.sum() == round(0.15 * 126)
        assert (ex["labels"][chosen] == original[chosen]).all()
        is_mask = ex["input_ids"] == vocab.special.mask
        assert ((ex["input_ids"] == original) | is_mask).all(), "no random replacement"
        assert not is_mask[~chosen].any()
        selected += int(chosen.sum())
        masked += int(is_mask.sum())
    assert within(masked / selected, 0.85, selected)


def test_labels_are_one_exactly_where_the_sample_differs(vocab) -> None:
    """Logits that force the sample: rows 0, 2 sample the original token, rows 1, 3 another one
    (or [MASK], which is forbidden and therefore never sampled)."""
    inputs = torch.tensor([[2, 4, 500, 4, 3], [2, 700, 4, 4, 3]])
    labels = torch.full_like(inputs, IGNORE)
    labels[0, 1], labels[0, 3], labels[1, 2], labels[1, 3] = 300, 301, 302, 303
    logits = torch.zeros(4, vocab.size)
    logits[0, 300] = logits[2, 302] = 1e4  # = the original
    logits[1, 555] = logits[3, 777] = 1e4  # a different ordinary token
    logits[:, vocab.special.mask] = 1e5
    corrupted, replaced = replace_with_samples(inputs, labels, logits, sorted(vocab.special.all()))
    assert corrupted.tolist() == [[2, 300, 500, 555, 3], [2, 700, 302, 777, 3]]
    assert replaced.tolist() == [[0, 0, 0, 1, 0], [0, 0, 0, 1, 0]]


def test_samples_follow_the_generator_and_avoid_special_ids(vocab) -> None:
    torch.manual_seed(0)
    n = 20000
    inputs = torch.full((1, n), vocab.special.mask)
    labels = torch.full_like(inputs, 200)
    logits = torch.zeros(n, vocab.size)
    logits[:, 200], logits[:, 201] = np.log(3.0), 0.0  # p(200) = 3 p(201) = 3 p(any other)
    corrupted, replaced = replace_with_samples(inputs, labels, logits, sorted(vocab.special.all()))
    assert not torch.isin(corrupted, torch.tensor(sorted(vocab.special.all()))).any()
    p_original = 3 / (3 + vocab.size - vocab.first_normal_id - 1)
    assert within(float((corrupted == 200).float().mean()), p_original, n)
    assert torch.equal(replaced.bool(), corrupted != 200)


def test_an_exponential_sample_of_zero_never_picks_a_special_id(vocab, monkeypatch) -> None:
    """Exp(1) can return 0, whose Gumbel noise is +inf: on a forbidden id already at -inf that
    made NaN, and argmax takes NaN for the largest value."""
    monkeypatch.setattr(torch.Tensor, "exponential_", lambda self, *args, **kwargs: self.zero_())
    inputs = torch.full((1, 8), vocab.special.mask)
    labels = torch.full_like(inputs, 200)
    special = sorted(vocab.special.all())
    corrupted, _ = replace_with_samples(inputs, labels, torch.zeros(8, vocab.size), special)
    assert not torch.isin(corrupted, torch.tensor(special)).any()


def test_generator_is_a_quarter_wide_same_depth_and_shares_the_embeddings(vocab) -> None:
    objective = get_objective("electra")(vocab, 64)
    model = tiny(objective, vocab)
    assert type(model.discriminator) is Transformer
    generator, disc = model.generator.cfg, model.discriminator.cfg
    assert generator.hidden == disc.hidden // 4 == 32 and generator.heads == 1
    assert generator.n_layers == disc.n_layers and generator.ffn == 4 * generator.hidden
    assert model.discriminator.lm_head.proj.weight is model.discriminator.embed.tokens.weight
    assert not any("embed" in name for name, _ in model.generator.named_parameters())
    base = generator_config(resolve_model_config("base", vocab_size=100, layout="bert"), 1 / 3)
    assert (base.hidden, base.heads) == (256, 4)  # ELECTRA-Base generator


def test_disc_loss_never_reaches_the_generator_and_embeddings_learn_from_both(vocab, random_window) -> None:
    objective = get_objective("electra")(vocab, 32)
    model = tiny(objective, vocab).eval()  # no dropout: the two discriminator passes agree
    batch = batch_of(objective, vocab, random_window, 4)
    seen = []
    discriminate = model.discriminate
    model.discriminate = lambda ids: seen.append(ids) or discriminate(ids)
    loss, metrics = objective.loss(model, batch)
    (corrupted,) = seen
    assert not (corrupted == vocab.special.mask).any(), "the discriminator never sees [MASK]"
    unmasked = batch["labels"] == IGNORE
    assert torch.equal(corrupted[unmasked], batch["input_ids"][unmasked])
    replaced = corrupted != torch.where(unmasked, batch["input_ids"], batch["labels"])
    disc, _ = objective.discriminator_loss(model, corrupted, replaced.float())
    assert float(disc.detach()) == pytest.approx(metrics["disc_loss"], rel=1e-5)
    assert float(loss.detach()) == pytest.approx(metrics["mlm_loss"] + 50 * metrics["disc_loss"], rel=1e-5)

    names, params = zip(*model.named_parameters())
    from_disc = dict(zip(names, torch.autograd.grad(disc, params, allow_unused=True)))
    generator_only = [n for n in names if n.startswith(("generator.", "discriminator.lm_head."))]
    assert generator_only and all(from_disc[n] is None for n in generator_only)
    shared = "discriminator.embed.tokens.weight"
    assert from_disc[shared] is not None and from_disc[shared].abs().sum() > 0
    selected = batch["labels"] != IGNORE
    logits = model.logits(model.generate(batch["input_ids"])[selected])
    mlm_loss = torch.nn.functional.cross_entropy(logits, batch["labels"][selected])
    from_mlm = dict(zip(names, torch.autograd.grad(mlm_loss, params, allow_unused=True)))
    assert from_mlm[shared].abs().sum() > 0
    assert all(from_mlm[n] is not None for n in names if n.startswith("generator."))
    assert all(from_mlm[n] is None for n in names if n.startswith(("discriminator_head.", "discriminator.encoder.")))


def test_downstream_keeps_only_the_discriminator(vocab) -> None:
    objective = get_objective("electra")(vocab, 16)
    model = tiny(objective, vocab).eval()
    downstream = objective.to_downstream(model, model.discriminator.cfg)
    assert downstream is model.discriminator
    ids = torch.randint(vocab.first_normal_id, vocab.size, (2, 16))
    valid = torch.ones_like(ids, dtype=torch.bool)
    features = objective.features(downstream, ids, valid)
    assert features.shape == (2, 16, 128)
    assert torch.allclose(features, model.discriminator.encode(ids, attn_mask=valid[:, None, :]))
