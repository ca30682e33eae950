"""Layer-wise learning-rate decay: which rate each parameter of a task model trains at."""

from __future__ import annotations

import json

import pytest
import torch

from ptmkit.errors import UserError
from ptmkit.finetuning.layer_decay import layer_depth, layerwise_scales
from ptmkit.finetuning.run import finetune
from ptmkit.train.loop import TrainConfig, make_optimizer


def test_depths_of_backbone_parameters() -> None:
    assert layer_depth("backbone.embed.tokens.weight", 4, 4) == 0
    assert layer_depth("backbone.encoder.layers.0.fc_in.weight", 4, 4) == 1
    assert layer_depth("backbone.encoder.layers.3.attn.qkv.bias", 4, 4) == 4
    assert layer_depth("backbone.final_norm.weight", 4, 4) == 5


def test_a_decoder_sits_above_the_encoder_and_its_embeddings_at_the_bottom() -> None:
    """BART-style: the decoder's position embeddings trained at the full rate, and its layer i
    at the rate of encoder layer i."""
    from ptmkit.model.backbone import Transformer
    from ptmkit.model.config import resolve_model_config
    cfg = resolve_model_config("tiny", vocab_size=300, layout="bart", encoder_decoder=True, n_layers=2,
                               n_decoder_layers=2)
    model = torch.nn.ModuleDict({"backbone": Transformer(cfg), "head": torch.nn.Linear(2, 2)})
    scales = layerwise_scales(model, 0.5)
    assert scales["head.weight"] == 1.0
    assert scales["backbone.decoder.layers.1.fc_in.weight"] == 0.5
    assert scales["backbone.decoder.layers.0.fc_in.weight"] == 0.25
    assert scales["backbone.encoder.layers.1.fc_in.weight"] == 0.125
    assert scales["backbone.encoder.layers.0.fc_in.weight"] == 0.0625
    assert scales["backbone.decoder_embed.positions.weight"] == scales["backbone.embed.tokens.weight"] == 0.5 ** 5


def test_head_trains_fastest_and_each_layer_below_decays(keyword_task, keyword_spec, tmp_path) -> None:
    from ptmkit.finetuning.model import TaskModel
    from ptmkit.finetuning.run import _prepare
    prepared = _prepare(keyword_spec(keyword_task, tmp_path / "run"))  # tiny: 2 layers
    model = TaskModel(prepared.backbone, prepared.task)
    scales = layerwise_scales(model, 0.5)
    assert scales["head.out.weight"] == scales["head.pooler.bias"] == 1.0
    assert scales["backbone.encoder.layers.1.fc_in.weight"] == 0.5
    assert scales["backbone.encoder.layers.0.fc_in.weight"] == 0.25
    assert scales["backbone.embed.tokens.weight"] == scales["backbone.embed.norm.bias"] == 0.125
    assert layerwise_scales(model, 1.0) == {}
    optimizer = make_optimizer(model, TrainConfig(weight_decay=0.01), scales)
    by_param = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    for name, param in model.named_parameters():
        group = by_param[id(param)]
        assert group["lr_scale"] == scales[name]
        assert group["weight_decay"] == (0.01 if param.ndim >= 2 else 0.0)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))


def test_finetuning_applies_the_scaled_rates(keyword_task, keyword_spec, tmp_path, monkeypatch) -> None:
    import ptmkit.finetuning.run as run_module
    given = []
    monkeypatch.setattr(run_module, "make_optimizer",
                        lambda model, cfg, scales: given.append(scales) or make_optimizer(model, cfg, scales))
    result = finetune(keyword_spec(keyword_task, tmp_path / "run", layer_decay=0.5, epochs=2))
    assert result["accuracy"] > 0.5
    assert given and given[-1]["backbone.embed.tokens.weight"] == 0.125 and given[-1]["head.out.weight"] == 1.0
    lines = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2
    with pytest.raises(UserError, match="--layer-decay"):
        finetune(keyword_spec(keyword_task, tmp_path / "bad", layer_decay=1.5))
    assert not (tmp_path / "bad").exists()


def test_pooling_choice_is_kept_in_the_run(keyword_task, keyword_spec, tmp_path) -> None:
    from ptmkit.finetuning.run import evaluate, load_finetuned
    result = finetune(keyword_spec(keyword_task, tmp_path / "run", pooling="mean", epochs=2))
    _, task, _ = load_finetuned(tmp_path / "run")
    assert task.pooling == "mean"
    assert evaluate(tmp_path / "run", str(keyword_task / "dev.tsv"))["accuracy"] == pytest.approx(result["accuracy"])
    with pytest.raises(UserError, match="unknown pooling 'max'"):
        finetune(keyword_spec(keyword_task, tmp_path / "bad", pooling="max"))
