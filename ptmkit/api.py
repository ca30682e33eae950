"""The Python API: `ptmkit.load_run`, `ptmkit.pretrain(...)` and `ptmkit.finetune(...)`.

`load_run(path)` rebuilds a pre-training or fine-tuning run as a :class:`RunModel`, whose
:meth:`RunModel.logits` is what `ptmkit export --format hf` reproduces in `transformers`
(same input ids, no attention mask, eval mode), and whose :meth:`RunModel.encode` gives pooled
sentence vectors. `pretrain` and `finetune` mirror the CLI with keyword arguments.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ptmkit.data.tokenizer import Tokenizer
from ptmkit.errors import UserError
from ptmkit.finetuning.model import Backbone, read_run_config
from ptmkit.finetuning.run import FinetuneSpec, load_finetuned
from ptmkit.finetuning.search import as_head_epochs, as_rates, finetune_search
from ptmkit.finetuning.seq2seq_task import Seq2Seq
from ptmkit.finetuning.tagging import Tag
from ptmkit.finetuning.tasks import Classify, Regress, TaskSpec, pad_batch
from ptmkit.model.backbone import Transformer
from ptmkit.model.config import ModelConfig
from ptmkit.objectives import get_objective
from ptmkit.objectives.base import Vocab
from ptmkit.pretraining import PretrainSpec, check_run_dir, prepared_seq_len, pretrain as run_pretrain, resume_settings
from ptmkit.train.checkpoint import load_weights
from ptmkit.train.loop import TrainConfig

__all__ = ["RunModel", "finetune", "load_run", "pretrain", "shift_right"]


def shift_right(input_ids: Tensor, start_id: int) -> Tensor:
    """Teacher-forcing decoder input: `start_id`, then every id but the last (Hugging Face's
    `shift_tokens_right` with `decoder_start_token_id`)."""
    shifted = input_ids.new_full(input_ids.shape, start_id)
    shifted[:, 1:] = input_ids[:, :-1]
    return shifted


class RunModel:
    """A run, loaded for inference (eval mode, no gradients).

    Attributes: `kind` ("pretrain" or "finetune"), `objective` (its name), `config` (config.yaml),
    `tokenizer`, `model_cfg`, `network` (the whole trained module: the objective's model, or the
    fine-tuned `TaskModel`), `backbone` (the network fine-tuning builds on), `task` (fine-tuned
    runs only).
    """

    def __init__(self, run: Path, kind: str, config: dict[str, Any], objective: Any, tokenizer: Any,
                 model_cfg: Any, network: nn.Module | None, backbone: nn.Module, task: Any = None) -> None:
        self.run, self.kind, self.config = run, kind, config
        self.objective_impl, self.objective = objective, config["objective"]
        self.tokenizer, self.model_cfg = tokenizer, model_cfg
        self.network, self.backbone, self.task = network, backbone, task
        for module in (network, backbone):
            if module is not None:
                module.eval()

    def __repr__(self) -> str:
        return f"RunModel({self.kind} run {str(self.run)!r}, objective={self.objective!r})"

    @property
    def architecture(self) -> str:
        return self.objective_impl.architecture

    @property
    def decoder_start_id(self) -> int:
        """The id that starts the decoder input of an encoder-decoder run: its objective's
        (`text_frame().decoder_start`: bart </s>, t5 pad, mass <s>)."""
        return self.objective_impl.text_frame().decoder_start

    @property
    def cfg(self) -> Any:
        """The config of the Transformer that `backbone` is (word2vec's downstream encoder has
        its own width), else the run's model config."""
        return getattr(self.backbone, "cfg", None) or self.model_cfg

    @torch.no_grad()
    def logits(self, input_ids: Tensor | Sequence[Sequence[int]]) -> Tensor:
        """Output scores for `input_ids` (B, L) (a 1-d input is one sequence), no padding mask.

        * encoders (mlm, wwm, plm/mpnet content stream): (B, L, vocab), bidirectional;
        * decoder-only runs (clm, prefixlm): (B, L, vocab), causal (a prefix LM's prefix is
          input-dependent and not part of this call: it runs as a plain causal LM, as GPT-2);
        * encoder-decoders (bart, mass, t5): (B, L, vocab) decoder logits with the encoder reading
          `input_ids` and the decoder reading the same ids shifted right behind the objective's
          start token (`decoder_start_id`; BART's `shift_tokens_right`);
        * electra: (B, L) replaced-token logits of the discriminator (`ElectraForPreTraining`);
        * fine-tuned classify / regress runs: the head's output (B, labels), as
          `BertForSequenceClassification`; tag / keyphrase runs: (B, L, labels) per sub-word, as
          `BertForTokenClassification`; seq2seq runs on an encoder-decoder: its decoder logits, as
          for the encoder-decoder pre-training runs.
        """
        ids = _as_ids(input_ids)
        self._check_ids(ids)
        if self.kind == "finetune":
            if isinstance(self.task, Seq2Seq) and self.architecture == "encoder_decoder":
                return self._decoder_logits(self.backbone, ids)
            if not (type(self.task) in (Classify, Regress) or isinstance(self.task, Tag)):
                raise UserError(f"task {self.task.spec.name} needs more than token ids", str(self.run),
                                "use `ptmkit evaluate` (or generate) for it")
            batch = {"input_ids": ids, "valid": torch.ones_like(ids, dtype=torch.bool),
                     "word_number": torch.zeros_like(ids)}
            output = self.network(batch)
            return getattr(output, "logits", output).float()
        architecture, model = self.architecture, self.network
        if self.objective == "electra":
            return model.discriminate(ids).float()
        if model is None or architecture in ("lstm", "shallow") or not isinstance(model, Transformer):
            raise UserError(f"a {self.objective} run has no Transformer language-model logits", str(self.run),
                            "use .encode(texts) for its representations")
        if architecture == "encoder_decoder":
            return self._decoder_logits(model, ids)
        hidden = model.encode(ids, is_causal=architecture in ("decoder", "prefix"))
        return model.logits(hidden).float()

    def _decoder_logits(self, model: nn.Module, ids: Tensor) -> Tensor:
        """An encoder-decoder's logits with `ids` as the source and, shifted right behind the
        decoder start, as the decoder's input."""
        memory = model.encode(ids)
        return model.logits(model.decode(shift_right(ids, self.decoder_start_id), memory)).float()

    def _check_ids(self, ids: Tensor) -> None:
        """Ids the model has embeddings for, and no more positions than it learned (else an
        IndexError deep in the embedding lookup)."""
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.cfg.vocab_size):
            raise UserError(f"input_ids hold ids from {int(ids.min())} to {int(ids.max())}, outside the "
                            f"model's vocabulary of {self.cfg.vocab_size}", "logits(input_ids)",
                            f"pass ids in 0..{self.cfg.vocab_size - 1} (from run.tokenizer)")
        if self._positions is not None and ids.shape[1] > self._positions:
            raise UserError(f"input_ids of length {ids.shape[1]}, more than the model's {self._positions} "
                            "positions", "logits(input_ids)", f"pass at most {self._positions} ids per sequence")

    @property
    def _positions(self) -> int | None:
        """The most tokens a sequence may have: the learned position table's length (None for
        word2vec / ELMo features, which have no such table)."""
        return None if self.architecture in ("lstm", "shallow") else self.cfg.max_positions

    @torch.no_grad()
    def encode(self, texts: str | Sequence[str], *, max_length: int | None = None,
               batch_size: int = 32) -> Tensor:
        """Pooled representations (N, width) of `texts`, framed and pooled as fine-tuning does:
        `[CLS] text [SEP]` (the tokenizer's own cls/sep ids), cut to `max_length` tokens (default
        the model's positions, at most 512), then pooled as `pooling` says: a fine-tuned run as its
        task pooled; otherwise the first token for encoders, the last real token for decoder-only
        runs, the mean of the encoder's states for encoder-decoders (bart, mass, t5) and the mean
        for word2vec / ELMo runs."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if max_length is not None and self._positions is not None and max_length > self._positions:
            raise UserError(f"max_length={max_length} exceeds the model's {self._positions} positions",
                            "encode(max_length=...)", f"use at most {self._positions}")
        limit = max_length or min(512, self.cfg.max_positions)
        framing = Classify(TaskSpec(name="classify", max_length=limit), self.tokenizer, self.pooling,
                           token_types=False)
        framing.check_max_length()  # [CLS] text [SEP] needs 3
        items = framing.encode_texts([{"text": text} for text in texts])
        pooled = []
        for start in range(0, len(items), batch_size):
            batch = pad_batch(items[start:start + batch_size], self.tokenizer.special.pad)
            features = self.objective_impl.features(self.backbone, batch["input_ids"], batch["valid"])
            pooled.append(framing.pool(features, batch).float())
        return torch.cat(pooled) if pooled else torch.zeros(0, self.backbone.output_size)

    @property
    def pooling(self) -> str:
        """How a sequence becomes one vector ("first", "last" or "mean"): a fine-tuned run's
        task's (its --pooling, or the default it resolved to), else the backbone's default."""
        if self.task is not None:
            return self.task.pooling
        return Backbone(self.backbone, self.objective_impl, self.objective, self.model_cfg,
                        self.tokenizer, str(self.run)).pooling


def _as_ids(input_ids: Tensor | Sequence[Sequence[int]]) -> Tensor:
    ids = input_ids if torch.is_tensor(input_ids) else torch.tensor(input_ids)
    if ids.dim() == 1:
        ids = ids[None]
    if ids.dim() != 2 or ids.dtype not in (torch.int64, torch.int32):
        raise UserError(f"input_ids must be integer ids of shape (batch, length), got {tuple(ids.shape)} "
                        f"{ids.dtype}", "logits(input_ids)", "pass a LongTensor of token ids")
    return ids.long()


def load_run(path: str | Path) -> RunModel:
    """Load a `ptmkit pretrain` or `ptmkit finetune` run directory for inference."""
    run = Path(path)
    config = read_run_config(run)
    kind = config.get("kind")
    if kind == "finetune":
        model, task, config = load_finetuned(run)
        return RunModel(run, kind, config, model.features.__self__, task.tokenizer,
                        ModelConfig.from_dict(config["model"]), model, model.backbone, task)
    if kind != "pretrain":
        raise UserError(f"unknown run kind {kind!r}", str(run / "config.yaml"),
                        "point at a `ptmkit pretrain` or `ptmkit finetune` output")
    tokenizer = Tokenizer.load(run / "tokenizer")
    seq_len = int((config.get("train") or {}).get("seq_len", 128))
    objective = get_objective(config["objective"])(Vocab.of(tokenizer), seq_len,
                                                   config.get("objective_options") or {})
    cfg = ModelConfig.from_dict(config["model"], str(run / "config.yaml"))
    if objective.standalone:
        return RunModel(run, kind, config, objective, tokenizer, cfg, None, objective.load_pretrained(run, cfg))
    network = objective.build_model(cfg)
    load_weights(network, run / "model.safetensors")
    return RunModel(run, kind, config, objective, tokenizer, cfg, network, objective.to_downstream(network, cfg))


# ---- training, mirroring the CLI ---------------------------------------------------------------

def pretrain(*, objective: str | None = None, out: str | Path, **options: Any) -> dict[str, Any]:
    """`ptmkit pretrain` as a function; returns the run's summary.

    Keyword arguments are `PretrainSpec` fields (data, corpus, tokenizer, text_field, model,
    objective_options, init -- a run or "hf:DIR" --, resume, overwrite, val_fraction, progress)
    and `TrainConfig` fields (steps, batch_size, seq_len, lr, ...), or `train=TrainConfig(...)`
    instead of them. As on the command line, `seq_len` defaults to the one `data` was prepared
    for, and `resume=True` continues with the run's own settings (objective included) under the
    ones given again.
    """
    spec_fields = {f.name for f in dataclasses.fields(PretrainSpec)}
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(options) - spec_fields - train_fields)
    if unknown:
        raise UserError(f"unknown option(s) {', '.join(unknown)}", "ptmkit.pretrain()",
                        f"use PretrainSpec or TrainConfig fields: {', '.join(sorted(spec_fields | train_fields))}")
    train_values = {k: v for k, v in options.items() if k in train_fields and k not in spec_fields}
    spec_values = {k: v for k, v in options.items() if k in spec_fields}
    train = spec_values.pop("train", None)
    if train is not None and train_values:
        # a built TrainConfig has resolved its warm-up, logging and step count for its own steps:
        # changing `steps` in it would keep them (and 60 warm-up steps would refuse steps=50)
        raise UserError(f"train=TrainConfig(...) given with {', '.join(sorted(train_values))}", "ptmkit.pretrain()",
                        "put those fields into the TrainConfig, or pass them all without train=")
    if spec_values.get("resume"):
        check_run_dir(Path(out), resume=True, overwrite=bool(spec_values.get("overwrite")))
        saved = {k: v for k, v in resume_settings(Path(out), corpus_given=bool(spec_values.get("corpus"))).items()
                 if v is not None}
        saved_objective = saved.pop("objective", None)
        objective = objective or saved_objective
        spec_values = {**{k: v for k, v in saved.items() if k in spec_fields}, **spec_values}
        if train is None:
            train_values = {**{k: v for k, v in saved.items() if k in train_fields}, **train_values}
    if objective is None:
        raise UserError("no objective given", "ptmkit.pretrain()", "pass objective=, e.g. objective=\"mlm\"")
    for key in ("data", "tokenizer"):
        if spec_values.get(key) is not None:
            spec_values[key] = Path(spec_values[key])
    if train is None and "seq_len" not in train_values and spec_values.get("data") is not None:
        train_values["seq_len"] = prepared_seq_len(spec_values["data"])  # the window prepare was asked for
    # built from the values, not replaced into a default: `max_minutes` alone must leave the
    # step count open (TrainConfig resolves it), as `--max-minutes` does on the command line
    train = train if train is not None else TrainConfig(**train_values)
    if spec_values.get("init") is not None:  # a run directory as a Path, or "hf:DIR" (config.yaml keeps a str)
        spec_values["init"] = str(spec_values["init"])
    if "corpus" in spec_values:
        corpus = spec_values["corpus"]
        spec_values["corpus"] = [str(corpus)] if isinstance(corpus, (str, Path)) else [str(c) for c in corpus]
    return run_pretrain(PretrainSpec(objective=objective, out=Path(out), train=train, **spec_values))


def finetune(*, task: str, init: str | Path, out: str | Path, **options: Any) -> dict[str, Any]:
    """`ptmkit finetune` as a function (keyword arguments are `FinetuneSpec` fields: train, dev,
    data_dir, tokenizer, text_fields, label_field, epochs, lr, batch_size, max_length, ...);
    returns eval.json's content. `init` is a pre-training run, "scratch" or "hf:DIR". `lr` and
    `head_epochs` may be lists: a search, as `--lr 1e-4,5e-4` on the command line."""
    known = {f.name for f in dataclasses.fields(FinetuneSpec)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise UserError(f"unknown option(s) {', '.join(unknown)}", "ptmkit.finetune()",
                        f"use FinetuneSpec fields: {', '.join(sorted(known))}")
    values = dict(options)
    for key in ("train", "dev", "data_dir"):
        if values.get(key) is not None:
            values[key] = str(values[key])
    if values.get("tokenizer") is not None:
        values["tokenizer"] = Path(values["tokenizer"])
    if isinstance(values.get("text_fields"), str):
        values["text_fields"] = [f.strip() for f in values["text_fields"].split(",") if f.strip()]
    # a list of rates or of head epochs is a search, as `--lr 1e-4,5e-4` is
    rates = as_rates(values.pop("lr", FinetuneSpec.lr))
    heads = as_head_epochs(values.pop("head_epochs", FinetuneSpec.head_epochs))
    spec = FinetuneSpec(task=task, init=str(init), out=Path(out), lr=rates[0], head_epochs=heads[0], **values)
    return finetune_search(spec, rates, heads)
