"""--head-epochs (LP-FT): the task head is fitted alone on the fixed backbone before the whole
model trains."""

from __future__ import annotations

import json

import pytest
import torch

from ptmkit.errors import UserError
from ptmkit.finetuning.head_first import fit_head
from ptmkit.finetuning.model import TaskModel
from ptmkit.finetuning.run import _prepare, evaluate_items, finetune


def _model(keyword_task, keyword_spec, tmp_path) -> tuple[TaskModel, object]:
    torch.manual_seed(0)
    prepared = _prepare(keyword_spec(keyword_task, tmp_path / "run", pooling="mean"))
    return TaskModel(prepared.backbone, prepared.task), prepared


def test_only_the_head_moves_and_the_backbone_trains_again_after(keyword_task, keyword_spec, tmp_path) -> None:
    model, prepared = _model(keyword_task, keyword_spec, tmp_path)
    model.backbone.embed.tokens.weight.requires_grad_(False)  # as --freeze-embeddings leaves it
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    fit_head(model, prepared.task, prepared.train, epochs=2, lr=3e-3, batch_size=16, warmup_ratio=0.1,
             weight_decay=0.01, precision="fp32", seed=0)
    for name, param in model.named_parameters():
        moved = not torch.equal(param, before[name])
        assert moved == name.startswith("head."), name
        # what trained before trains again; what the caller froze stays frozen
        assert param.requires_grad == (name != "backbone.embed.tokens.weight"), name
    assert model.training and model.backbone.training


def test_a_fitted_head_reads_the_fixed_features(keyword_task, keyword_spec, tmp_path) -> None:
    """great/awful decides the label: even a random backbone's mean-pooled features carry which
    word is present, and a head fitted alone on them learns it. (The bar is the majority class,
    not the random head's own score: that moves with the fixture's WordPiece vocabulary, which the
    tokenizers trainer does not make the same twice.)"""
    model, prepared = _model(keyword_task, keyword_spec, tmp_path)
    targets = [item["target"].tolist() for item in prepared.dev]
    majority = max(targets.count(label) for label in set(targets)) / len(targets)
    loss = fit_head(model, prepared.task, prepared.train, epochs=30, lr=1e-2, batch_size=16, warmup_ratio=0.1,
                    weight_decay=0.0, precision="fp32", seed=0)
    fitted = evaluate_items(model, prepared.task, prepared.dev, targets, 32)["accuracy"]
    assert fitted >= 0.9 > majority + 0.2 and loss < 0.4


def test_finetuning_records_the_head_phase_and_checks_its_options(keyword_task, keyword_spec, tmp_path) -> None:
    result = finetune(keyword_spec(keyword_task, tmp_path / "run", head_epochs=3, epochs=2))
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["phase"] == "head" and lines[0]["epochs"] == 3 and lines[0]["loss"] > 0
    assert [line["epoch"] for line in lines[1:]] == [1, 2] and result["accuracy"] > 0.5
    for bad in ({"head_epochs": -1}, {"head_lr": 0.0}):
        with pytest.raises(UserError, match="--head-epochs/--head-lr"):
            finetune(keyword_spec(keyword_task, tmp_path / "bad", **bad))
        assert not (tmp_path / "bad").exists()
