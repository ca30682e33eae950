"""`ptmkit finetune` and `ptmkit evaluate`: train a task head (and the backbone) by epochs,
evaluate on dev after each, keep the best, write the run directory."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import platform
import re
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from tqdm import tqdm

import ptmkit
from ptmkit.checks import positive
from ptmkit.errors import RunStopped, UserError
from ptmkit.fileio import is_within, nearest_existing
from ptmkit.finetuning.data import FIELD_FLAGS, batches_of, glue_files, glue_spec, label_budget
from ptmkit.finetuning.head_first import fit_head
from ptmkit.finetuning.layer_decay import layerwise_scales
from ptmkit.finetuning.model import Backbone, TaskModel, load_backbone, read_run_config
from ptmkit.finetuning.registry import get_task
from ptmkit.finetuning.step import train_step
from ptmkit.finetuning.tasks import KEEP_EPOCHS, Task, TaskSpec, stratify_key
from ptmkit.model.config import ModelConfig
from ptmkit.objectives import get_objective
from ptmkit.objectives.base import Vocab
from ptmkit.data.tokenizer import Tokenizer
from ptmkit.pretraining import check_run_dir
from ptmkit.train.checkpoint import (atomic_save_model, latest_checkpoint, load_checkpoint, load_extra,
                                     load_weights, remove_checkpoints, save_checkpoint)
from ptmkit.train.host import compute_device, device_of, keep_freed_memory, to_device, warn_if_emulated_bf16
from ptmkit.train.loop import PRECISIONS, TrainConfig, learning_rate, make_optimizer


@dataclass(kw_only=True)
class FinetuneSpec:
    """Everything `ptmkit finetune` needs; the CLI and `ptmkit.finetune()` both build one."""

    task: str
    init: str
    out: Path
    train: str | None = None
    dev: str | None = None
    data_dir: str | None = None
    tokenizer: Path | None = None
    text_fields: list[str] = field(default_factory=lambda: ["text"])
    label_field: str = "label"
    negative_label: str | None = None
    """Relation tasks: the "no relation" class left out of F1 (None: auto-detect, see relation.py)."""
    source_field: str = "source"
    target_field: str = "target"
    max_target_length: int = 64
    target_list: str = "references"
    """seq2seq fields (see `TaskSpec`); --train/--dev may also be SRC,TGT parallel text files."""
    model: str | dict = "tiny"
    """Size of a scratch model: a name, a YAML file or a dict of ModelConfig fields."""
    max_train_examples: int | None = None
    dev_fraction: float = 0.1
    cv_folds: int = 0
    """With no dev file: cut the training data into this many seeded folds (stratified by class)
    and score fold `fold`, training on the others (k-fold cross-validation; 0: hold out
    `dev_fraction` instead). Over all folds every example is scored once, so a small task's
    score no longer hangs on which few examples one split happened to hold out."""
    fold: int = 0
    select_fraction: float | None = None
    """Hold out this share of the (budgeted) training examples to pick the best epoch, then score
    the dev set once with that model; 0 picks the epoch on the dev set itself. None (not set): 0
    for one learning rate, `search.SEARCH_SELECT_FRACTION` for a search over several, so the
    dev set never picks a rate unless asked to."""
    epochs: int = 3
    min_steps: int = 0
    """Train at least this many optimizer steps, adding epochs when the data is small (a
    100-example budget makes 4 steps an epoch: too few to learn anything in --epochs). The model is
    still scored about --epochs times: every (epochs run // --epochs)-th epoch and after the last,
    so that 38 tiny epochs do not score a large dev set 38 times."""
    lr: float = 5e-5
    batch_size: int = 32
    max_length: int = 128
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    patience: int = 0
    """Stop after this many scored epochs without improvement on dev; 0 = never stop early."""
    keep_epoch: str = "best"
    """best: keep the epoch that scores best on dev (or the held-out slice); last: train every
    epoch and score only the final model. With dev picking the epoch, its best-of-N score is
    optimistic: on a few dozen examples the noise alone lifts it by several points."""
    seed: int = 0
    freeze: bool = False
    freeze_embeddings: bool = False
    """Keep the token embeddings as pre-trained (see `TaskModel`)."""
    pooling: str = "auto"
    """first | last | mean | auto (the pre-training architecture's natural choice)."""
    dropout: float | None = None
    """Dropout of the backbone (hidden and attention) while fine-tuning; None keeps the
    model's own (0.1 for ptmkit's sizes). Few labels may want more."""
    head_epochs: int = 0
    """Before the whole model, train only the head this many epochs on the fixed pre-trained
    features (LP-FT, see `head_first`); 0 = off."""
    head_lr: float = 3e-3
    """The head's learning rate while it trains alone (--head-epochs)."""
    layer_decay: float = 1.0
    """Layer-wise learning-rate decay: the head trains at --lr, each layer below at this factor
    times the one above, the embeddings lowest (ELECTRA's fine-tuning); 1 = one rate for all."""
    precision: str = "fp32"
    overwrite: bool = False
    progress: bool = True
    resume: bool = False
    """Continue an interrupted run in `out` from its last epoch checkpoint (same options)."""
    checkpoint_seconds: float = 60.0
    """Write an epoch checkpoint (for `resume`) once this much time has passed since the last one
    or the start; 0 writes one after every epoch. A crash loses at most this much training, and
    runs of seconds (a fold of a small task: the demo's 90 would write 20 GB) write none."""


@dataclass
class _Prepared:
    task: Task
    backbone: Backbone
    train: list[dict[str, np.ndarray]]
    dev: list[dict[str, np.ndarray]]
    dev_targets: list[Any]
    select: list[dict[str, np.ndarray]] | None = None
    """The held-out training slice that picks the epoch (None: the dev set picks it)."""
    more_dev: dict[str, list[dict[str, np.ndarray]]] = field(default_factory=dict)
    """Further dev sets scored once with the kept model, by name (MNLI's `mismatched`)."""


def _task_spec(spec: FinetuneSpec) -> tuple[str, TaskSpec, str, list[str]]:
    """Resolve `glue:<name>` into a task, fields and files; returns (task, spec, train, devs)."""
    if spec.task.startswith("glue:"):
        name = spec.task.split(":", 1)[1]
        glue = glue_spec(name)
        if spec.data_dir is None:
            raise UserError("glue tasks need the GLUE folder", "--data-dir", "pass --data-dir DIR")
        train, devs = glue_files(name, spec.data_dir)
        task_spec = TaskSpec(name=glue.task, text_fields=list(glue.text_fields),
                             label_field=glue.label_field, max_length=spec.max_length,
                             metrics=list(glue.metrics), pooling=spec.pooling,
                             columns=list(glue.columns) if glue.columns else None)
        return glue.task, task_spec, str(train), [str(d) for d in devs]
    get_task(spec.task)
    if spec.train is None:
        raise UserError("no training data", "--train", "pass --train FILE (and --dev FILE)")
    task_spec = TaskSpec(name=spec.task, text_fields=list(spec.text_fields),
                         label_field=spec.label_field, max_length=spec.max_length,
                         negative_label=spec.negative_label, source_field=spec.source_field,
                         target_field=spec.target_field, max_target_length=spec.max_target_length,
                         target_list=spec.target_list, pooling=spec.pooling)
    return spec.task, task_spec, spec.train, [spec.dev] if spec.dev else []


def _prepare(spec: FinetuneSpec) -> _Prepared:
    task_name, task_spec, train_path, dev_paths = _task_spec(spec)
    task_class = get_task(task_name)
    backbone = task_class.adapt(load_backbone(spec.init, tokenizer_dir=spec.tokenizer, model=spec.model,
                                              max_length=spec.max_length, dropout=spec.dropout,
                                              scratch_objective=task_class.scratch_objective))
    task = task_class(task_spec, backbone.tokenizer, backbone.pooling, token_types=False)
    task.bind(backbone)
    train_path, dev_paths = task.resolve_files(train_path, dev_paths)
    if spec.cv_folds and dev_paths:  # the folds would be cut and then ignored: dev would be scored
        raise UserError(f"--cv-folds {spec.cv_folds} scores folds of the training data, but there is a dev set "
                        f"({dev_paths[0]})", "--cv-folds", "drop --dev (or --cv-folds) to use one of them")
    train_records = task.read(train_path)
    if dev_paths:
        dev_records = task.read(dev_paths[0])
    elif spec.cv_folds:
        task.fit_labels(train_records)
        train_records, dev_records = _fold(task, train_records, train_path, spec)
    else:  # no dev file: hold out a stratified, seeded slice of the training data
        task.fit_labels(train_records)
        n_dev = max(1, round(spec.dev_fraction * len(train_records)))
        if n_dev >= len(train_records):
            raise UserError(f"--dev-fraction {spec.dev_fraction} of {len(train_records)} training examples "
                            "leaves none to train on", train_path, "add training examples or pass --dev FILE")
        train_records, dev_records = _split_off(task, train_records, train_path, n_dev, spec.seed + 1)
    task.fit_labels(train_records)
    n_available = len(train_records)
    if spec.max_train_examples is not None:
        if spec.max_train_examples > n_available:
            warnings.warn(f"--max-train-examples {spec.max_train_examples} exceeds the "
                          f"{n_available} training examples; using all of them", stacklevel=2)
        keys, stratified = stratify_key(task, task.targets(train_records, train_path))
        keep = label_budget(keys, spec.max_train_examples, spec.seed, stratified)
        train_records = [train_records[i] for i in keep]
    select = None
    if spec.select_fraction:
        train_records, select_records = _hold_out(task, train_records, train_path, spec)
        select = task.encode(select_records, train_path)
    train = task.encode(train_records, train_path)
    if not train:  # e.g. a keyphrase archive whose documents all lack keys: nothing to take a step on
        raise UserError("no training examples", train_path, "check --train and the fields it is read with")
    dev = task.encode(dev_records, dev_paths[0] if dev_paths else train_path)
    more_dev = {Path(path).stem.removeprefix("dev_"): task.encode(task.read(path), path) for path in dev_paths[1:]}
    return _Prepared(task, backbone, train, dev, [item["target"].tolist() for item in dev], select, more_dev)


def _hold_out(task: Task, records: list, path: str, spec: FinetuneSpec) -> tuple[list, list]:
    """(train, selection): a stratified, seeded slice of the training examples picks the epoch
    (`check_options` has checked that select_fraction is a share)."""
    assert spec.select_fraction is not None
    n_select = round(spec.select_fraction * len(records))
    if n_select < 1 or n_select >= len(records):
        raise UserError(f"--select-fraction {spec.select_fraction} of {len(records)} training examples "
                        "leaves no selection or no training data", "--select-fraction",
                        "raise the label budget or change the fraction")
    return _split_off(task, records, path, n_select, spec.seed + 2)


def _fold(task: Task, records: list, path: str, spec: FinetuneSpec) -> tuple[list, list]:
    """(the other folds, fold `spec.fold`) of a seeded k-fold partition, stratified by class."""
    from sklearn.model_selection import KFold, StratifiedKFold
    _check_folds(spec)
    keys, stratified = stratify_key(task, task.targets(records, path))
    splitter = (StratifiedKFold if stratified else KFold)(spec.cv_folds, shuffle=True, random_state=spec.seed + 1)
    try:
        _, dev = list(splitter.split(np.zeros(len(keys)), [str(k) for k in keys]))[spec.fold]
    except ValueError as error:  # more folds than examples (of a class)
        raise UserError(f"{spec.cv_folds} folds of {len(records)} examples: {error}", "--cv-folds",
                        "use fewer folds (each class needs at least one example per fold)") from None
    return _partition(records, dev)


_GLUE_OWN = {"train": "--train", "dev": "--dev", "text_fields": "--text-fields", "label_field": "--label-field",
             "cv_folds": "--cv-folds"}
"""What a glue:<name> task takes from its GLUE folder (files, fields, the dev set it scores)."""


def _check_glue(spec: FinetuneSpec) -> None:
    """A glue task reads its own files and fields: another one given would be silently ignored."""
    if not spec.task.startswith("glue:"):
        return
    glue = glue_spec(spec.task.split(":", 1)[1])
    defaults = {f.name: f.default_factory() if callable(f.default_factory) else f.default
                for f in dataclasses.fields(FinetuneSpec) if f.name in _GLUE_OWN}
    own = {"text_fields": list(glue.text_fields), "label_field": glue.label_field}
    for name, flag in _GLUE_OWN.items():
        if getattr(spec, name) not in (defaults[name], own.get(name, defaults[name])):
            raise UserError(f"{flag} is not used by {spec.task}: it reads the files, fields and dev set of "
                            "its GLUE folder", flag, f"drop {flag}, or use --task classify (or regress) with your own files")


def _check_folds(spec: FinetuneSpec) -> None:
    """--cv-folds K needs K >= 2 and a --fold in 0..K-1; a --fold without --cv-folds would be ignored."""
    if spec.cv_folds:
        if spec.cv_folds < 2:
            raise UserError(f"--cv-folds {spec.cv_folds}: cross-validation needs at least 2 folds", "--cv-folds",
                            "use 2 or more, or 0 for a held-out --dev-fraction")
        if not 0 <= spec.fold < spec.cv_folds:
            raise UserError(f"fold {spec.fold} of {spec.cv_folds}", "--fold", f"use 0 to {spec.cv_folds - 1}")
    elif spec.fold:
        raise UserError(f"--fold {spec.fold} without --cv-folds", "--fold",
                        "pass --cv-folds K as well, or drop --fold")


def _split_off(task: Task, records: list, path: str, n: int, seed: int) -> tuple[list, list]:
    """(rest, slice): `n` records, stratified by class where the task has classes, seeded."""
    keys, stratified = stratify_key(task, task.targets(records, path))
    return _partition(records, label_budget(keys, n, seed, stratified, held_out=True))


def _partition(records: list, indices: np.ndarray) -> tuple[list, list]:
    """(the records not at `indices`, the records at them), each in file order."""
    chosen = set(indices.tolist())
    return ([r for i, r in enumerate(records) if i not in chosen],
            [r for i, r in enumerate(records) if i in chosen])


def check_task_data(spec: FinetuneSpec) -> None:
    """The task's data files read and their fields checked, without a model or a tokenizer: what
    a compare checks of each task before anything trains."""
    task_name, task_spec, train_path, dev_paths = _task_spec(spec)
    task = get_task(task_name)(task_spec, None, "first", token_types=False)
    train_path, dev_paths = task.resolve_files(train_path, dev_paths)
    for path in (train_path, *dev_paths):
        task.read(path)


def check_finetune_out(spec: FinetuneSpec) -> None:
    """--out must be new or empty, or an interrupted run with --resume, or replaced on purpose
    (and then hold none of the run's own inputs, which --overwrite would delete)."""
    if spec.resume:
        if latest_checkpoint(spec.out) is None:
            raise UserError("nothing to resume", str(spec.out),
                            "drop --resume, or point --out at an interrupted fine-tuning run")
        return
    check_run_dir(spec.out, resume=False, overwrite=spec.overwrite)
    if spec.overwrite and spec.out.is_dir():
        inside = [path for path in _input_paths(spec) if path.exists() and is_within(path, spec.out)]
        if inside:
            raise UserError(f"--overwrite would delete {inside[0]}, which this run reads", str(spec.out),
                            "choose an --out that holds none of --init, --tokenizer and the data files")


def _input_paths(spec: FinetuneSpec) -> list[Path]:
    """What the run reads from disk: --init (a run or hf:DIR), --tokenizer, --data-dir, and each
    file of --train/--dev (SRC,TGT pairs split at the comma, a keyphrase ZIP:part at the colon)."""
    values = [spec.init.removeprefix("hf:") if spec.init != "scratch" else None, spec.tokenizer, spec.data_dir]
    for data in (spec.train, spec.dev):
        for part in (data.split(",") if data else []):
            values += [part, part.rsplit(":", 1)[0]]
    return [Path(value) for value in values if value]


def check_options(spec: FinetuneSpec) -> None:
    """The options that need no file, checked before any is read or written."""
    if spec.dropout is not None and not 0 <= spec.dropout < 1:
        raise UserError(f"--dropout {spec.dropout} is not in [0, 1)", "--dropout", "use e.g. 0.1 or 0.3")
    if not 0 < spec.layer_decay <= 1:
        raise UserError(f"--layer-decay {spec.layer_decay} is not in (0, 1]", "--layer-decay",
                        "use e.g. 0.8 (lower layers learn slower) or 1 (off)")
    if spec.head_epochs < 0 or not positive(spec.head_lr):
        raise UserError(f"--head-epochs {spec.head_epochs} / --head-lr {spec.head_lr}: epochs must be 0 or more, "
                        "the rate positive", "--head-epochs/--head-lr", "e.g. --head-epochs 5 --head-lr 3e-3 (0: off)")
    if spec.epochs < 1 or spec.batch_size < 1 or not positive(spec.lr):
        raise UserError("epochs, batch size and learning rate must be positive", "--epochs/--batch-size/--lr",
                        "e.g. --epochs 3 --batch-size 32 --lr 5e-5")
    if spec.precision not in PRECISIONS:
        raise UserError(f"precision {spec.precision!r} is not one of {', '.join(PRECISIONS)}", "--precision",
                        "use fp32, or bf16 on hardware with bf16 units")
    if spec.min_steps < 0 or spec.patience < 0 or not (math.isfinite(spec.weight_decay) and spec.weight_decay >= 0):
        raise UserError(f"min_steps {spec.min_steps}, patience {spec.patience} and weight_decay "
                        f"{spec.weight_decay} must be 0 or more", "--min-steps/--patience/weight_decay",
                        "e.g. min_steps 150, patience 2 (0: off), weight_decay 0.01")
    if spec.seed < 0:
        raise UserError(f"--seed {spec.seed} is negative", "--seed", "use 0 or more")
    if not 0 <= spec.warmup_ratio < 1:
        raise UserError(f"warmup_ratio {spec.warmup_ratio} is not in [0, 1)", "warmup_ratio",
                        "use a share of the steps, e.g. 0.1")
    if not 0 < spec.dev_fraction < 1:  # 0 or less used to hold out 1 example, 1 or more every one
        raise UserError(f"--dev-fraction {spec.dev_fraction} is not a share", "--dev-fraction",
                        "use a number between 0 and 1, e.g. 0.1")
    if spec.max_train_examples is not None and spec.max_train_examples < 1:
        raise UserError(f"--max-train-examples {spec.max_train_examples} leaves nothing to train on",
                        "--max-train-examples", "use 1 or more, or drop it to train on every example")
    _check_glue(spec)
    if not spec.task.startswith("glue:") and not (
            spec.text_fields and all(isinstance(f, str) and f.strip() for f in spec.text_fields)):
        raise UserError(f"no text field named in {spec.text_fields!r}", "--text-fields",
                        "name one field, or two comma-separated for pairs, e.g. --text-fields sentence")
    if spec.keep_epoch not in KEEP_EPOCHS:
        raise UserError(f"--keep-epoch {spec.keep_epoch!r} is not one of {', '.join(KEEP_EPOCHS)}", "--keep-epoch",
                        "use best (the best-scoring epoch) or last (the final model)")
    if spec.keep_epoch == "last" and spec.patience:
        raise UserError(f"--patience {spec.patience} stops on dev scores that --keep-epoch last never computes",
                        "--patience", "drop --patience, or use --keep-epoch best")
    if spec.select_fraction is not None and not 0 <= spec.select_fraction < 1:
        raise UserError(f"--select-fraction {spec.select_fraction} is not a share", "--select-fraction",
                        "use a number between 0 and 1, e.g. 0.1 (0: pick on dev)")
    _check_folds(spec)


def check_finetune(spec: FinetuneSpec) -> _Prepared:
    """Every check `finetune` makes before it touches --out: the options, --out itself, then the
    inputs, read and encoded and the backbone built; a learning-rate search runs it before it
    replaces an earlier run."""
    check_finetune_out(spec)
    check_options(spec)
    torch.manual_seed(spec.seed)  # a scratch backbone is initialised inside _prepare
    return _prepare(spec)


def finetune(spec: FinetuneSpec) -> dict[str, Any]:
    """Fine-tune, keep the best epoch (picked on dev or the held-out slice) or the last one,
    write the run; returns eval.json's content."""
    keep_freed_memory()
    if spec.select_fraction is None:  # one rate: the dev set picks the epoch unless asked otherwise
        spec = dataclasses.replace(spec, select_fraction=0.0)
    prepared = check_finetune(spec)  # every input error surfaces before the run directory is touched
    if spec.overwrite and spec.out.is_dir() and not spec.resume:
        shutil.rmtree(spec.out)
    spec.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(spec.seed)
    model = TaskModel(prepared.backbone, prepared.task, freeze=spec.freeze,
                      freeze_embeddings=spec.freeze_embeddings).to(compute_device())
    head = None
    if spec.head_epochs and not prepared.task.has_head:  # in a compare, settings meant for NLU tasks reach NLG ones
        warn_headless(prepared.task.name, spec.head_epochs)
    elif spec.head_epochs and not spec.resume:  # a resumed run's checkpoint holds the fitted head
        loss = fit_head(model, prepared.task, prepared.train, epochs=spec.head_epochs, lr=spec.head_lr,
                        batch_size=spec.batch_size, warmup_ratio=spec.warmup_ratio, weight_decay=spec.weight_decay,
                        precision=spec.precision, seed=spec.seed, progress=spec.progress)
        head = {"phase": "head", "epochs": spec.head_epochs, "loss": loss}
    best, history = _train(model, prepared, spec, head)
    if "state" not in best:
        raise _no_finite_score(spec, prepared, history)
    model.load_state_dict(best["state"])
    metrics = best["metrics"]
    if prepared.select is not None:  # the epoch was picked on held-out training data: score dev once
        metrics = {**evaluate_items(model, prepared.task, prepared.dev, prepared.dev_targets, spec.batch_size),
                   **{f"select_{k}": v for k, v in metrics.items()}}
    for name, items in prepared.more_dev.items():
        targets = [item["target"].tolist() for item in items]
        metrics.update({f"{name}_{k}": v for k, v in
                        evaluate_items(model, prepared.task, items, targets, spec.batch_size).items()})
    atomic_save_model(model, spec.out / "model.safetensors")
    prepared.backbone.tokenizer.save(spec.out / "tokenizer")
    _write_config(spec, prepared)
    result = {**metrics, "epoch": best["epoch"], "main_metric": prepared.task.main_metric,
              "train_examples": len(prepared.train), "dev_examples": len(prepared.dev),
              "select_examples": len(prepared.select) if prepared.select is not None else 0,
              "init": prepared.backbone.source, "objective": prepared.backbone.objective_name}
    _write_json(spec.out / "eval.json", result)
    remove_checkpoints(spec.out)  # finished: the epoch checkpoints have served their purpose
    return result


def warn_headless(task: str, head_epochs: int | list[int]) -> None:
    """--head-epochs on a task without a head of its own: trained as without (a compare's setting
    meant for its NLU tasks reaches its NLG ones too)."""
    given = ",".join(map(str, head_epochs)) if isinstance(head_epochs, list) else head_epochs
    warnings.warn(f"--head-epochs {given} ignored: a {task} task has no head of its own (the backbone's LM "
                  "head writes the output)", stacklevel=3)


def kept_model(keep_epoch: str, select_fraction: float | None) -> str:
    """Which model a fine-tuning scored, in words (the compare report, the exported model card)."""
    if keep_epoch == "last":
        return "the final model"
    if select_fraction:
        return f"the epoch that scores best on a held-out {select_fraction:.0%} of the training labels"
    return "the epoch that scores best on dev itself"


def _no_finite_score(spec: FinetuneSpec, prepared: _Prepared, history: list[dict]) -> RunStopped:
    """No epoch can be kept: the training loss diverged (the weights are NaN, whatever the
    predictions still score), or every epoch scored NaN (or inf), e.g. on targets the metric is
    undefined for (constant dev scores for pearson). The run directory stays, with its
    metrics.jsonl to look at."""
    metric = prepared.task.main_metric
    scored = "the held-out --select-fraction slice" if prepared.select is not None else "the dev set"
    if not all(np.isfinite(line["loss"]) for line in history):
        return RunStopped(f"the training loss diverged (NaN or inf), so no epoch scored on {scored} is fit to keep",
                          str(spec.out), "lower --lr")
    return RunStopped(f"no epoch scored a finite {metric} on {scored}, so there is no best epoch to keep",
                      str(spec.out), f"check its targets ({metric} is undefined when, e.g., they are all equal), "
                      "or lower --lr")


def _train(model: TaskModel, prepared: _Prepared, spec: FinetuneSpec, head: dict | None = None) -> tuple[dict, list]:
    """The whole model's epochs; `head` is the metrics line of a head fitted alone before them."""
    task, device = prepared.task, device_of(model)
    warn_if_emulated_bf16(spec.precision, device)
    steps_per_epoch = -(-len(prepared.train) // spec.batch_size)
    epochs = max(spec.epochs, -(-spec.min_steps // steps_per_epoch))
    score_every = max(1, epochs // spec.epochs)  # the epochs --min-steps adds are not each scored
    cfg = TrainConfig(steps=epochs * steps_per_epoch, lr=spec.lr, batch_size=spec.batch_size,
                      warmup=max(1, round(spec.warmup_ratio * epochs * steps_per_epoch)),
                      weight_decay=spec.weight_decay, precision=spec.precision, seed=spec.seed)
    optimizer = make_optimizer(model, cfg, layerwise_scales(model, spec.layer_decay))
    rng = np.random.default_rng(spec.seed)
    best: dict[str, Any] = {"score": -np.inf}
    history, stale, step, first = [head] if head else [], 0, 0, 1
    if spec.resume:
        first, step, stale, history, best = _restore(spec, model, optimizer, rng)
    metrics_file = open(spec.out / "metrics.jsonl", "w")
    metrics_file.writelines(json.dumps(line) + "\n" for line in history)  # the epochs up to the checkpoint
    bar = tqdm(total=cfg.steps, initial=step, desc="finetune", unit="step", disable=not spec.progress,
               mininterval=1.0)
    done = bool(spec.patience and stale >= spec.patience)
    saved = time.monotonic()
    for epoch in range(first, 1 if done else epochs + 1):
        model.train()
        losses = []
        for items in batches_of(prepared.train, spec.batch_size, rng):
            losses.append(train_step(model, task, items, optimizer, learning_rate(cfg, step), spec.precision,
                                     clip_norm=1.0))
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        line = {"epoch": epoch, "step": step, "loss": float(np.mean(losses)), "lr": learning_rate(cfg, step - 1)}
        if epoch == epochs or (spec.keep_epoch == "best" and epoch % score_every == 0):
            # the held-out slice, when there is one, decides; dev is then scored once, at the end
            scored, prefix = (prepared.dev, "dev") if prepared.select is None else (prepared.select, "select")
            metrics = evaluate_items(model, task, scored, [item["target"].tolist() for item in scored],
                                     spec.batch_size)
            line.update({f"{prefix}_{k}": v for k, v in metrics.items()})
            score = metrics[task.main_metric]
            # a NaN score, or a diverged loss (NaN weights still argmax to class 0, a finite accuracy),
            # is never the best epoch
            if np.isfinite(score) and np.isfinite(line["loss"]) and score > best["score"]:
                best = {"score": score, "epoch": epoch, "metrics": metrics,
                        "state": copy.deepcopy(model.state_dict())}
                stale = 0
            else:
                stale += 1
        metrics_file.write(json.dumps(line) + "\n")
        metrics_file.flush()
        history.append(line)
        stop = bool(stale and spec.patience and stale >= spec.patience)
        if epoch < epochs and not stop and time.monotonic() - saved >= spec.checkpoint_seconds:
            _save_epoch(spec, model, optimizer, rng, epoch, step, stale, history, best)
            saved = time.monotonic()
        if stop:
            break
    bar.close()
    metrics_file.close()
    return best, history


_NOT_RESUMED = ("resume", "overwrite", "progress", "checkpoint_seconds")
"""How to run, not what: every other option shapes the schedule or the result (more --epochs
stretch the learning-rate decay), so a resumed run must share it."""


def _resume_key(spec: FinetuneSpec) -> dict[str, Any]:
    """The options a resumed run must share with the interrupted one; files by their absolute
    path, so a run started with relative paths resumes with absolute ones (or from elsewhere)."""
    return _absolute_paths({k: v for k, v in dataclasses.asdict(spec).items() if k not in _NOT_RESUMED})


def _absolute_paths(key: dict[str, Any]) -> dict[str, Any]:
    # also applied to a saved key: one written with relative paths (or by an older ptmkit) still matches
    return {k: (_absolute(str(v)) if isinstance(v, (str, Path)) else v) for k, v in key.items()}


def _absolute(value: str) -> str:
    """`value` with each comma-separated part that names an existing file (or a `ZIP:part`
    of one) made absolute; other text (scratch, hf:DIR, a field name) unchanged."""
    def part(text: str) -> str:
        base, sep, suffix = text.rpartition(":")
        for path, rest in ((text, ""), (base, sep + suffix)):
            if path and Path(path).exists():
                return str(Path(path).resolve()) + rest
        return text
    return ",".join(map(part, value.split(",")))


def _save_epoch(spec: FinetuneSpec, model: TaskModel, optimizer: torch.optim.Optimizer,
                rng: np.random.Generator, epoch: int, step: int, stale: int, history: list,
                best: dict[str, Any]) -> None:
    """Model, optimizer, RNG states, epoch and the best epoch so far (its weights included)."""
    state = {"step": step, "epoch": epoch, "stale": stale, "history": history,
             "best": {k: v for k, v in best.items() if k != "state"},
             "shuffle_rng": rng.bit_generator.state, "spec": _resume_key(spec)}
    save_checkpoint(spec.out, model, optimizer, state, keep=1,
                    extra={f"best.{k}": v for k, v in best.get("state", {}).items()})


def _restore(spec: FinetuneSpec, model: TaskModel, optimizer: torch.optim.Optimizer,
             rng: np.random.Generator) -> tuple[int, int, int, list, dict[str, Any]]:
    """Load the last epoch checkpoint; returns (next epoch, step, stale, history, best)."""
    path = latest_checkpoint(spec.out)
    try:
        saved = json.loads((path / "state.json").read_text())["trainer"]
        saved["spec"]
    except (OSError, ValueError, KeyError, TypeError) as err:  # a pre-training's checkpoint has no spec
        raise UserError(f"not the checkpoint of an interrupted fine-tuning ({err.__class__.__name__})", str(path),
                        "point --out at the fine-tuning run to resume, or drop --resume to start over") from None
    now, before = _resume_key(spec), _absolute_paths(saved["spec"])
    changed = sorted(k for k in set(now) | set(before) if now.get(k) != before.get(k))
    if changed:
        first = changed[0]
        raise UserError(f"the interrupted run used other options ({first}: {before.get(first)!r}, "
                        f"now {now.get(first)!r})", str(spec.out), "resume with the options it was started with")
    load_checkpoint(path, model, optimizer)
    rng.bit_generator.state = saved["shuffle_rng"]
    best = dict(saved["best"])
    weights = {k[len("best."):]: v for k, v in load_extra(path).items() if k.startswith("best.")}
    if weights:
        best["state"] = weights
    return saved["epoch"] + 1, saved["step"], saved["stale"], saved["history"], best


@torch.no_grad()
def predict_items(model: TaskModel, task: Task, items: list, batch_size: int) -> list[Any]:
    model.eval()
    device = device_of(model)
    predictions: list[Any] = []
    for chunk in batches_of(items, batch_size, None):
        predictions += task.predict_batch(model, to_device(task.collate(chunk), device))
    return predictions


def evaluate_items(model: TaskModel, task: Task, items: list, targets: list, batch_size: int) -> dict[str, float]:
    return task.metrics(predict_items(model, task, items, batch_size), targets)


def _write_config(spec: FinetuneSpec, prepared: _Prepared) -> None:
    backbone = prepared.backbone
    config = {
        "kind": "finetune",
        "task": dataclasses.asdict(prepared.task.spec),
        "init": spec.init,
        "objective": backbone.objective_name,
        "objective_options": dataclasses.asdict(backbone.objective.options),
        "model": backbone.model_cfg.to_dict(),
        "finetune": {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(spec).items()},
        "versions": {"ptmkit": ptmkit.__version__, "torch": str(torch.__version__),
                     "python": platform.python_version()},
    }
    _write_text(spec.out / "config.yaml", yaml.safe_dump(config, sort_keys=False))


def load_finetuned(run: Path) -> tuple[TaskModel, Task, dict[str, Any]]:
    """Rebuild a fine-tuned model (backbone + head) from its run directory."""
    config = read_run_config(run, "--run")
    if config.get("kind") != "finetune":
        raise UserError("not a fine-tuned run", str(run), "point --run at a `ptmkit finetune` output")
    tokenizer = Tokenizer.load(run / "tokenizer")
    try:
        task_spec = TaskSpec(**config["task"])
        objective_cls, options, model_dict = get_objective(config["objective"]), config["objective_options"], config["model"]
    except (KeyError, TypeError) as err:  # a key gone, or one TaskSpec does not know
        raise UserError(f"damaged run config ({type(err).__name__}: {err})", str(run / "config.yaml"),
                        "point --run at a complete `ptmkit finetune` run") from None
    objective = objective_cls(Vocab.of(tokenizer), task_spec.max_length, options)
    cfg = ModelConfig.from_dict(model_dict)
    backbone = Backbone(objective.downstream_network(cfg), objective, config["objective"], cfg, tokenizer,
                        config["init"])
    task = get_task(task_spec.name)(task_spec, tokenizer, backbone.pooling, token_types=False)
    task.bind(backbone)
    model = TaskModel(backbone, task)
    load_weights(model, run / "model.safetensors")
    return model, task, config


def evaluate(run: Path, data: str, out: Path | None = None, batch_size: int = 64,
             overwrite: bool = False) -> dict[str, Any]:
    """Score a fine-tuned run on any file of its task's format; `out` (not replaced unless
    `overwrite`) gets the metrics too."""
    if out is not None:
        _check_out_file(out, overwrite)
    model, task, _ = load_finetuned(run)
    model.to(compute_device())
    try:
        records = task.read(data)
        items = task.encode(records, data)
    except UserError as err:
        raise _as_evaluate_error(err, task) from None
    metrics = evaluate_items(model, task, items, [item["target"].tolist() for item in items], batch_size)
    result = {**metrics, "examples": len(items), "data": data}
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        _write_json(out, result)
    return result


def _check_out_file(out: Path, overwrite: bool) -> None:
    """evaluate --out is a file to write: refuse a directory, a path through a file, or an
    existing file (a run's own eval.json, say) without --overwrite, before the evaluation rather
    than after it. Missing folders are made when the result is written, so a failed evaluation
    leaves none behind."""
    if out.is_dir():
        raise UserError("--out is a directory", str(out), "name a JSON file, e.g. --out metrics.json")
    if out.exists() and not overwrite:
        raise UserError("--out already exists", str(out), "name a new file, or pass --overwrite to replace it")
    above = nearest_existing(out.parent)
    if not above.is_dir():
        raise UserError(f"{above} is a file, not a folder", str(out), "name a JSON file in a folder for --out")


def _as_evaluate_error(err: UserError, task: Task) -> UserError:
    """The task's readers name the `finetune` flag that chose a field; evaluate has no such flag
    (the run fixed its fields when it was fine-tuned), so name the field the run reads instead."""
    flag = next((f for f in FIELD_FLAGS if f in err.fix), None)
    if flag is None:
        return err
    attribute, name = FIELD_FLAGS[flag]
    value = getattr(task.spec, attribute)
    value = ", ".join(map(repr, value)) if isinstance(value, list) else repr(value)
    available = re.search(r"one of: (.*)$", err.fix)
    if available:  # a field the data lacks
        fix = f"--data needs this run's {name} {value} (fixed when it was fine-tuned); it has: {available.group(1)}"
    else:  # a field with bad values
        fix = err.fix.replace(flag, f"{name} {value}")
    return type(err)(err.what, err.where, fix)


def _write_json(path: Path, value: dict[str, Any]) -> None:
    _write_text(path, json.dumps(value, indent=2))


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
