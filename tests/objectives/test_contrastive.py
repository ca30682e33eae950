"""Document-contrastive pre-training: which spans become views, the batch layout, the loss's
invariants, frozen embeddings, and continuing a word2vec run's downstream encoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ptmkit.data.shards import TokenShards, Window
from ptmkit.errors import UserError
from ptmkit.model.config import resolve_model_config
from ptmkit.objectives.base import Vocab
from ptmkit.objectives.contrastive import DocumentContrastive, pick_views, sentence_spans
from ptmkit.pretraining import PretrainSpec, pretrain
from ptmkit.train.loop import TrainConfig


def _window(sentences: list[int], documents: list[int], length: int) -> Window:
    """Tokens 1000, 1001, ... (so a view's tokens give back its positions)."""
    return Window(tokens=np.arange(1000, 1000 + length), sentence_starts=np.array(sentences),
                  document_starts=np.array(documents))


def _positions(window: Window, view: slice) -> tuple[int, int]:
    return int(window.tokens[view][0] - 1000), int(window.tokens[view][-1] - 1000 + 1)


def test_only_whole_sentences_inside_the_window_are_spans() -> None:
    # a piece of an earlier document (0-5), then a document 5.. with sentences at 5, 12, 20, 27;
    # the one starting at 27 runs past the window's end
    window = _window([5, 12, 20, 27], [5], 40)
    starts, ends, document = sentence_spans(window)
    assert list(zip(starts, ends)) == [(5, 12), (12, 20), (20, 27)]
    assert list(document) == [1, 1, 1]


def test_views_are_two_different_sentences_of_one_document() -> None:
    # document A: sentences 0-6, 6-15 (whole); document B starts at 15: 15-22, 22-31, 31-40, 40..
    window = _window([0, 6, 15, 22, 31, 40], [0, 15], 48)
    rng, seen = np.random.default_rng(0), set()
    for _ in range(400):
        first, second = (_positions(window, v) for v in pick_views(window, 1, rng))
        assert first != second
        same_document = {first[0] < 15, second[0] < 15}
        assert len(same_document) == 1, (first, second)
        assert first in {(0, 6), (6, 15), (15, 22), (22, 31), (31, 40)}
        seen.add(frozenset((first, second)))
    assert len(seen) == 1 + 3  # every pair within A and within B is drawn, none across them


def test_short_sentences_are_never_views() -> None:
    # A's second sentence has 2 tokens: with min_tokens 3 only B (two long sentences) can give a pair
    window = _window([0, 6, 8, 16, 25], [0, 8], 30)
    rng = np.random.default_rng(1)
    for _ in range(100):
        views = {_positions(window, v) for v in pick_views(window, 3, rng)}
        assert views == {(8, 16), (16, 25)}


def test_without_two_sentences_in_a_document_the_longest_piece_is_halved() -> None:
    # one-sentence documents (a corpus of short reviews): 0-7, 7-20, 20-26, then one running on
    window = _window([0, 7, 20, 26], [0, 7, 20, 26], 30)
    rng = np.random.default_rng(2)
    orders = set()
    for _ in range(50):
        first, second = (_positions(window, v) for v in pick_views(window, 1, rng))
        assert {first, second} == {(7, 14), (14, 20)}
        orders.add(first)
    assert orders == {(7, 14), (14, 20)}  # both orders occur


def test_examples_are_framed_and_collated_as_partner_rows(vocab: Vocab) -> None:
    objective = DocumentContrastive(vocab, seq_len=8, options={"min_tokens": 3})
    special = vocab.special
    window = Window(tokens=np.arange(200, 240), sentence_starts=np.array([0, 3, 20]),
                    document_starts=np.array([0]))
    examples = [objective.make_example(window, np.random.default_rng(s)) for s in range(3)]
    for ex in examples:
        for view in ex.values():
            assert view[0] == special.cls and view[-1] == special.sep and len(view) <= 8
        assert {len(ex["first"]), len(ex["second"])} == {3 + 2, 8}  # 3 tokens framed; 17 cut to 6
    batch = objective.collate(examples)["input_ids"]
    assert batch.shape == (6, 8)
    for i, ex in enumerate(examples):
        for row, view in ((i, ex["first"]), (3 + i, ex["second"])):
            assert batch[row, : len(view)].tolist() == view.tolist()
            assert (batch[row, len(view):] == special.pad).all()
    assert objective.window_length() == 1024
    assert DocumentContrastive(vocab, 8, {"window": 100}).window_length() == 100


def _model(objective: DocumentContrastive) -> torch.nn.Module:
    torch.manual_seed(0)
    return objective.build_model(resolve_model_config("tiny", vocab_size=objective.vocab.size,
                                                      layout=objective.layout))


def test_a_views_vector_does_not_depend_on_padding_or_its_batch(vocab: Vocab) -> None:
    objective = DocumentContrastive(vocab, seq_len=32)
    model = _model(objective).eval()
    rng = np.random.default_rng(0)
    views = [np.concatenate([[vocab.special.cls], rng.integers(200, 900, n), [vocab.special.sep]]) for n in (3, 20, 9)]
    ids = objective.collate([{"first": views[0], "second": views[1]}, {"first": views[2], "second": views[2]}])["input_ids"]
    with torch.no_grad():
        together = model(ids, ids != vocab.special.pad)
        for row, view in zip((0, 2, 1), views):
            alone = torch.from_numpy(view)[None]
            torch.testing.assert_close(together[row], model(alone, torch.ones_like(alone, dtype=torch.bool))[0],
                                       atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(together.norm(dim=1), torch.ones(4))


def test_loss_is_in_batch_cross_entropy_over_partners(vocab: Vocab) -> None:
    objective = DocumentContrastive(vocab, seq_len=16, options={"temperature": 0.5})
    model = _model(objective).eval()
    rng = np.random.default_rng(3)
    frame = lambda n: np.concatenate([[vocab.special.cls], rng.integers(200, 900, n), [vocab.special.sep]])  # noqa: E731
    batch = objective.collate([{"first": frame(5), "second": frame(7)} for _ in range(4)])
    with torch.no_grad():
        loss, metrics = objective.loss(model, batch)
        ids = batch["input_ids"]
        z = model(ids, ids != vocab.special.pad)
    expected = 0.0
    for i in range(8):
        partner = (i + 4) % 8
        others = [j for j in range(8) if j != i]
        logits = torch.stack([z[i] @ z[j] / 0.5 for j in others])
        expected -= float(z[i] @ z[partner] / 0.5 - torch.logsumexp(logits, 0)) / 8
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    found = sum(max((j for j in range(8) if j != i), key=lambda j: float(z[i] @ z[j])) == (i + 4) % 8
                for i in range(8))
    assert metrics["pair_accuracy"] == pytest.approx(found / 8)


def test_partners_sharing_a_topic_are_learnt(vocab: Vocab) -> None:
    """Each document draws its tokens from a topic of its own: after a few dozen steps the views
    find their partners far more often than chance (1 in 15)."""
    objective = DocumentContrastive(vocab, seq_len=16)
    torch.manual_seed(0)
    model = objective.build_model(resolve_model_config({"size": "tiny", "hidden": 64}, vocab_size=vocab.size,
                                                       layout=objective.layout))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)
    topics = rng.permutation(np.arange(200, 1000)).reshape(40, 20)

    def batch() -> dict:
        chosen = rng.choice(len(topics), size=8, replace=False)
        frame = lambda t: np.concatenate([[vocab.special.cls], rng.choice(topics[t], 8), [vocab.special.sep]])  # noqa: E731
        return objective.collate([{"first": frame(t), "second": frame(t)} for t in chosen])

    accuracies = []
    for _ in range(60):
        loss, metrics = objective.loss(model, batch())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        accuracies.append(metrics["pair_accuracy"])
    assert np.mean(accuracies[-10:]) > 0.5, accuracies


def test_frozen_embeddings_stay_while_the_encoder_learns(vocab: Vocab) -> None:
    objective = DocumentContrastive(vocab, seq_len=16, options={"freeze_embeddings": True})
    model = _model(objective)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    window = Window(tokens=np.arange(200, 264), sentence_starts=np.arange(0, 64, 8), document_starts=np.array([0]))
    batch = objective.collate([objective.make_example(window, np.random.default_rng(s)) for s in range(4)])
    objective.loss(model, batch)[0].backward()
    optimizer.step()
    after = dict(model.named_parameters())
    assert torch.equal(after["encoder.embed.tokens.weight"], before["encoder.embed.tokens.weight"])
    moved = {name for name in before if not torch.equal(after[name], before[name])}
    assert "projection.0.weight" in moved and any(name.startswith("encoder.encoder.") for name in moved)


def test_bad_options_name_the_option(vocab: Vocab) -> None:
    with pytest.raises(UserError, match="temperature must be > 0") as err:
        DocumentContrastive(vocab, 16, {"temperature": 0})
    assert err.value.where == "objective_options.temperature"
    with pytest.raises(UserError, match="min_tokens must be >= 1"):
        DocumentContrastive(vocab, 16, {"min_tokens": 0})
    with pytest.raises(UserError, match="window >= 2"):
        DocumentContrastive(vocab, 16, {"window": 1})


@pytest.fixture(scope="module")
def vectors_run(lee_shards: TokenShards, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("w2v") / "run"
    pretrain(PretrainSpec(objective="word2vec", out=run, data=lee_shards.directory, model={"size": "tiny", "hidden": 64},
                          progress=False, objective_options={"unit": "tokens", "vector_size": 64},
                          train=TrainConfig(steps=1)))
    return run


def _continue(data: Path, init: Path, out: Path, model: dict, **options) -> dict:
    return pretrain(PretrainSpec(objective="contrastive", out=out, data=data, model=model, init=str(init),
                                 objective_options=options, progress=False,
                                 train=TrainConfig(steps=2, batch_size=4, seq_len=32, workers=0)))


def test_continues_a_word2vec_runs_encoder_with_the_vectors_unscaled(lee_shards, vectors_run, tmp_path) -> None:
    summary = _continue(lee_shards.directory, vectors_run, tmp_path / "c", {"size": "tiny", "hidden": 64},
                        freeze_embeddings=True)
    assert summary["steps"] == 2 and summary["flops_per_token"] > 0
    vectors = load_file(str(vectors_run / "model.safetensors"))["embedding"]
    weights = load_file(str(tmp_path / "c" / "model.safetensors"))
    torch.testing.assert_close(weights["encoder.embed.tokens.weight"], vectors)  # frozen, as word2vec left them
    from ptmkit.finetuning.model import load_backbone
    backbone = load_backbone(str(tmp_path / "c"), max_length=32)
    torch.testing.assert_close(backbone.network.embed.tokens.weight, vectors)
    assert all(p.requires_grad for p in backbone.network.parameters())  # fine-tuning trains them all


def test_an_init_of_another_shape_is_refused_before_training(lee_shards, vectors_run, tmp_path) -> None:
    with pytest.raises(UserError, match="hidden=64 .* hidden=128") as err:
        _continue(lee_shards.directory, vectors_run, tmp_path / "c", "tiny")
    assert "hidden: 64" in err.value.fix and not (tmp_path / "c").exists()


def test_windows_longer_than_the_models_positions_are_drawn_from_and_ranked(lee_shards, tmp_path) -> None:
    """Views come from 256-token windows of a 64-position model; the collapse check reads the
    windows cut to those positions."""
    summary = pretrain(PretrainSpec(objective="contrastive", out=tmp_path / "r", data=lee_shards.directory,
                                    model={"size": "tiny", "max_positions": 64}, objective_options={"window": 256},
                                    progress=False, train=TrainConfig(steps=2, batch_size=4, seq_len=32, workers=0)))
    assert summary["steps"] == 2 and summary["feature_rank"] > 1
