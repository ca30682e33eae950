"""A pre-trained (or fresh) backbone with a task head on top."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ptmkit.data.tokenizer import Tokenizer
from ptmkit.errors import UserError
from ptmkit.fileio import read_yaml
from ptmkit.hf.importer import finetune_objective, is_hf, load_hf_network
from ptmkit.model.config import ModelConfig, resolve_model_config
from ptmkit.model.word_vectors import token_embedding_weights
from ptmkit.objectives import get_objective
from ptmkit.objectives.base import Objective, Vocab
from ptmkit.finetuning.tasks import Task

SCRATCH_OBJECTIVE = "mlm"
"""A from-scratch model has the architecture (and layout) of an MLM encoder, unless the task
needs another (`Task.scratch_objective`: seq2seq starts from a random BART-layout model)."""


@dataclass
class Backbone:
    """The network fine-tuning starts from, and what produced it."""

    network: nn.Module
    objective: Objective
    objective_name: str
    model_cfg: ModelConfig
    tokenizer: Tokenizer
    source: str

    @property
    def pooling(self) -> str:
        """How a sequence becomes one vector: the last token of decoder-only models, the mean
        of context-free or LSTM features, what the objective pooled (contrastive's mean), else the
        first ([CLS]) token."""
        if self.objective.pooling:
            return self.objective.pooling
        architecture = self.objective.architecture
        if architecture in ("decoder", "prefix"):
            return "last"
        # no [CLS] was trained to summarise the input: average the states (encoder-decoders
        # keep the decoder for generation; NLU reads the mean of the encoder's states)
        return "mean" if architecture in ("lstm", "shallow", "encoder_decoder") else "first"


def read_run_config(run: Path, flag: str = "--run") -> dict[str, Any]:
    """A run directory's config.yaml; `flag` names the option that pointed at `run` (finetune's
    --init, evaluate's and generate's --run), so the fix names what the user typed."""
    path = run / "config.yaml"
    if not path.is_file():
        fix = ("point --init at a directory written by `ptmkit pretrain`, or use scratch" if flag == "--init"
               else f"point {flag} at a directory written by `ptmkit finetune` or `ptmkit pretrain`")
        raise UserError("not a ptmkit run (no config.yaml)", str(run), fix)
    config = read_yaml(path, flag)
    if not isinstance(config, dict) or "kind" not in config:
        raise UserError("damaged run config (no kind:)", str(path), f"point {flag} at a complete run")
    return config


def check_max_length(max_length: int, cfg: ModelConfig, architecture: str) -> None:
    """Refuse a --max-length the model has no position for, before anything is written: longer
    inputs would index past the learned position table (an IndexError mid-training). A biLSTM
    (ELMo) has no such table and reads any length."""
    if architecture != "lstm" and max_length > cfg.max_positions:
        raise UserError(f"--max-length {max_length} exceeds the model's {cfg.max_positions} positions",
                        "--max-length", f"use at most {cfg.max_positions}")


def load_backbone(init: str, *, tokenizer_dir: Path | None = None, model: str | dict = "tiny",
                  max_length: int = 128, scratch_objective: str = SCRATCH_OBJECTIVE,
                  dropout: float | None = None) -> Backbone:
    """`scratch` (needs a tokenizer), a pre-training run directory, or `hf:DIR` (a local Hugging
    Face BERT / RoBERTa / GPT-2 / BART directory, see `ptmkit.hf.importer`). `dropout`, when
    given, replaces the model's hidden and attention dropout (weights are unaffected)."""
    if is_hf(init):
        return _hf_backbone(init, tokenizer_dir, max_length, dropout)
    if init == "scratch":
        if tokenizer_dir is None:
            raise UserError("a scratch model needs a tokenizer", "--tokenizer",
                            "pass --tokenizer DIR (e.g. from `ptmkit tokenizer`)")
        tokenizer = Tokenizer.load(tokenizer_dir)
        objective = get_objective(scratch_objective)(_vocab(tokenizer), max_length)
        cfg = resolve_model_config(model, vocab_size=tokenizer.vocab_size, layout=objective.layout,
                                   encoder_decoder=objective.architecture == "encoder_decoder").with_dropout(dropout)
        check_max_length(max_length, cfg, objective.architecture)
        return Backbone(objective.build_model(cfg), objective, scratch_objective, cfg, tokenizer, "scratch")
    run = Path(init)
    config = read_run_config(run, "--init")
    if config.get("kind") != "pretrain":
        raise UserError(f"--init needs a pre-training run, this one is a {config.get('kind')} run",
                        str(run), "point --init at a `ptmkit pretrain` output")
    tokenizer = Tokenizer.load(run / "tokenizer")
    if tokenizer_dir is not None and Tokenizer.load(tokenizer_dir).sha256() != tokenizer.sha256():
        raise UserError("--tokenizer differs from the run's tokenizer", str(tokenizer_dir),
                        "drop --tokenizer: a pre-trained run brings its own")
    name = config["objective"]
    objective = get_objective(name)(_vocab(tokenizer), max_length, config.get("objective_options") or {})
    cfg = ModelConfig.from_dict(config["model"], str(run / "config.yaml")).with_dropout(dropout)
    check_max_length(max_length, cfg, objective.architecture)
    return Backbone(objective.load_pretrained(run, cfg), objective, name, cfg, tokenizer, str(run))


def _hf_backbone(init: str, tokenizer_dir: Path | None, max_length: int, dropout: float | None) -> Backbone:
    network, imported = load_hf_network(init, dropout)
    if tokenizer_dir is not None and Tokenizer.load(tokenizer_dir).sha256() != imported.tokenizer.sha256():
        raise UserError("--tokenizer differs from the Hugging Face model's tokenizer", str(tokenizer_dir),
                        "drop --tokenizer: the imported model brings its own")
    name = finetune_objective(imported)  # a t5 / mass export frames text as its objective did
    objective = get_objective(name)(_vocab(imported.tokenizer), max_length)
    check_max_length(max_length, imported.model_cfg, objective.architecture)
    return Backbone(network.train(), objective, name, imported.model_cfg, imported.tokenizer, init)


def _vocab(tokenizer: Tokenizer) -> Vocab:
    return Vocab.of(tokenizer)


class TaskModel(nn.Module):
    """Backbone features -> task head. `backbone` and `head` are the weight-name prefixes."""

    def __init__(self, backbone: Backbone, task: Task, freeze: bool = False,
                 freeze_embeddings: bool = False) -> None:
        super().__init__()
        self.backbone = backbone.network
        self.features = backbone.objective.features
        self.task = task
        self.head = task.build_head(_hidden_size(backbone))
        if freeze:
            self.backbone.requires_grad_(False)
        if freeze_embeddings:
            # with few labels, the words the labelled examples contain would move and the
            # unseen ones stay behind; fixed vectors let what is learnt about a word reach its
            # pre-trained neighbours
            for weight in token_embedding_weights(self.backbone):
                weight.requires_grad_(False)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        return self.task.forward(self, batch)


def _hidden_size(backbone: Backbone) -> int:
    return backbone.network.output_size
