"""Every objective's run can start a fine-tuning, and the fine-tuned run re-loads exactly."""

from __future__ import annotations

from pathlib import Path

import gensim
import pytest
import torch

from ptmkit.data.corpus import read_texts
from ptmkit.data.shards import prepare
from ptmkit.data.tokenizer import train_tokenizer
from ptmkit.finetuning.model import load_backbone
from ptmkit.finetuning.run import FinetuneSpec, evaluate, finetune
from ptmkit.objectives import OBJECTIVES
from ptmkit.pretraining import PretrainSpec, pretrain
from ptmkit.train.loop import TrainConfig

LEE = Path(gensim.__file__).parent / "test" / "test_data" / "lee_background.cor"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("inits")
    tokenizer = train_tokenizer(read_texts([LEE]), kind="bpe", vocab_size=600, show_progress=False)
    prepare([LEE], tokenizer, root / "d", val_fraction=0.02, progress=False)
    task = root / "task.tsv"
    task.write_text("sentence\tlabel\n" + "".join(f"the fire {'spread' if i % 2 else 'ended'} today\t{i % 2}\n"
                                                  for i in range(40)))
    return root


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_any_run_fine_tunes_and_reloads(objective: str, data: Path, tmp_path: Path) -> None:
    run = tmp_path / "pre"
    pretrain(PretrainSpec(objective=objective, data=data / "d", out=run, progress=False,
                          train=TrainConfig(steps=2, batch_size=4, seq_len=32, workers=0)))
    out = tmp_path / "ft"
    result = finetune(FinetuneSpec(task="classify", init=str(run), out=out, train=str(data / "task.tsv"),
                                   text_fields=["sentence"], epochs=1, batch_size=8, max_length=16,
                                   progress=False))
    assert 0 <= result["accuracy"] <= 1 and result["objective"] == objective
    again = evaluate(out, str(data / "task.tsv"))
    assert set(again) >= {"accuracy", "f1_macro", "mcc"}


def test_downstream_networks_keep_what_each_paper_keeps(data: Path, tmp_path: Path) -> None:
    runs = {}
    for objective in ("word2vec", "elmo", "electra", "contrastive"):
        runs[objective] = tmp_path / objective
        pretrain(PretrainSpec(objective=objective, data=data / "d", out=runs[objective], progress=False,
                              train=TrainConfig(steps=2, batch_size=4, seq_len=32, workers=0)))
    w2v = load_backbone(str(runs["word2vec"]))
    from safetensors.torch import load_file
    vectors = load_file(str(runs["word2vec"] / "model.safetensors"))["embedding"]
    assert torch.equal(w2v.network.embed.tokens.weight, vectors)  # the encoder starts from the vectors
    assert w2v.pooling == "mean"
    elmo = load_backbone(str(runs["elmo"]))
    assert not any(p.requires_grad for p in elmo.network.bilm.parameters())  # frozen biLM
    assert all(p.requires_grad for p in elmo.network.mix.parameters())
    electra = load_backbone(str(runs["electra"]))
    assert type(electra.network).__name__ == "Transformer"  # the discriminator alone
    assert load_backbone(str(runs["contrastive"])).pooling == "mean"  # the state its loss compared


def _dropout_rates(network: torch.nn.Module) -> set[float]:
    """Every dropout rate in `network`: nn.Dropout modules and the attention's float rate (ELMo's
    one-layer nn.LSTMs carry an unused `dropout` of 0; its dropout is nn.Dropout between them)."""
    return {float(m.p) if isinstance(m, torch.nn.Dropout) else m.dropout for m in network.modules()
            if isinstance(m, torch.nn.Dropout)
            or (isinstance(getattr(m, "dropout", None), float) and not isinstance(m, torch.nn.RNNBase))}


@pytest.mark.parametrize("objective", ["mlm", "word2vec", "elmo", "bart"])
def test_fine_tuning_dropout_replaces_the_models_and_keeps_its_weights(objective: str, data: Path,
                                                                       tmp_path: Path) -> None:
    run = tmp_path / "pre"
    pretrain(PretrainSpec(objective=objective, data=data / "d", out=run, progress=False,
                          train=TrainConfig(steps=1, batch_size=4, seq_len=32, workers=0)))
    torch.manual_seed(0)  # word2vec's encoder layers start random: the same seed, the same start
    own = load_backbone(str(run))
    torch.manual_seed(0)
    changed = load_backbone(str(run), dropout=0.35)
    assert _dropout_rates(own.network) == {0.1} and _dropout_rates(changed.network) == {0.35}
    assert changed.model_cfg.dropout == changed.model_cfg.attention_dropout == 0.35
    weights = own.network.state_dict()
    assert all(torch.equal(weights[name], value) for name, value in changed.network.state_dict().items())
    scratch = load_backbone("scratch", tokenizer_dir=run / "tokenizer", dropout=0.0)
    assert _dropout_rates(scratch.network) == {0.0}


def test_fine_tuning_records_its_dropout_and_refuses_a_bad_one(data: Path, tmp_path: Path) -> None:
    spec = dict(task="classify", init="scratch", tokenizer=data / "d" / "tokenizer", train=str(data / "task.tsv"),
                text_fields=["sentence"], epochs=1, batch_size=8, max_length=16, progress=False)
    finetune(FinetuneSpec(out=tmp_path / "ft", dropout=0.25, **spec))
    assert "dropout: 0.25" in (tmp_path / "ft" / "config.yaml").read_text()
    from ptmkit.errors import UserError
    with pytest.raises(UserError, match=r"--dropout 1.0 is not in \[0, 1\)"):
        finetune(FinetuneSpec(out=tmp_path / "bad", dropout=1.0, **spec))
    assert not (tmp_path / "bad").exists()
