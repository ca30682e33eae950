"""What a compare will cost before it runs (`--dry-run`, the progress bar's ETA), and the budget
arithmetic it shares with the runs: steps of a steps or tokens budget, tokens of a corpus."""

from __future__ import annotations

import bz2
import gzip
import json
import math
from pathlib import Path
from typing import Any


from ptmkit.compare.config import RECIPE_PREFIX, CompareConfig, TaskConfig, finetune_recipe, max_length, recipe_search
from ptmkit.compare.plan import cells, pretrain_jobs
from ptmkit.data import hf_datasets
from ptmkit.data.corpus import is_json_array, list_corpus_files, text_bytes
from ptmkit.data.tokenizer import OWN_SPECIAL_IDS
from ptmkit.errors import UserError
from ptmkit.model.backbone import Transformer
from ptmkit.model.config import resolve_model_config
from ptmkit.objectives import get_objective
from ptmkit.objectives.base import Vocab

ASSUMED_FLOPS = 1e11
"""Sustained training FLOP/s assumed by --dry-run estimates (this class of 2-core CPU, fp32)."""
STARTUP_SECONDS = 5.0
"""What a run costs before its first step (its data read, its model built), added to each."""


def estimate(cfg: CompareConfig, out: Path | None = None) -> list[tuple[str, float]]:
    """(what, estimated seconds) of every pre-training job and fine-tuning cell; `out`: a
    compare's directory, whose prepared corpora give their exact sizes."""
    vocab = cfg.tokenizer.get("vocab_size", 8000) if isinstance(cfg.tokenizer, dict) else 8000
    model = Transformer(resolve_model_config(cfg.model, vocab_size=vocab, layout="bert"))
    rates: dict[tuple[str, int], float] = {}
    plan = []
    for job in pretrain_jobs(cfg):
        budget = cfg.domain_pretrain if job.domain else cfg.pretrain
        if job.objective.startswith(RECIPE_PREFIX) and cfg.recipe is not None:
            seconds = 60.0 * cfg.recipe.minutes  # its stages share the recipe's wall clock
        elif "minutes" in budget:
            seconds = 60.0 * budget["minutes"]
        else:
            objective = get_objective(job.objective)
            options = cfg.objective_options.get(job.objective, {})
            step = objective.step_tokens(batch_tokens(budget), corpus_tokens(cfg, job.domain, out))
            tokens = objective.planned_steps(budget_steps(budget, step), options) * step
            seq_len = budget.get("seq_len", 128)
            if (job.objective, seq_len) not in rates:
                rates[job.objective, seq_len] = objective.cpu_tokens_per_second(options) or ASSUMED_FLOPS / _flops_per_token(
                    cfg, job.objective, vocab, seq_len)
            seconds = STARTUP_SECONDS + tokens / rates[job.objective, seq_len]
        plan.append((f"pretrain {job.name}", seconds))
    sizes = {task.name: (_count_examples(task, task.train), _count_examples(task, task.dev)) for task in cfg.tasks}
    for cell in cells(cfg):
        recipe = finetune_recipe(cfg, scratch=cell.job is None)
        # a search fine-tunes once per rate and head-epoch count, holding out a slice to choose by
        rates, heads, recipe["select_fraction"] = recipe_search(recipe)
        folds = cell.task.cv_folds or 1  # cross-validation: one fine-tuning per fold
        length = max_length(cell.task, cfg.finetune)
        seconds = 0.0
        for head in heads:
            trained, scored = finetune_passes(recipe, cell.task, cell.budget, *sizes[cell.task.name], head)
            # the head trained alone and scoring run the backbone forward only: about a third of a step
            seconds += len(rates) * folds * (
                STARTUP_SECONDS + (trained + scored / 3) * length * model.flops_per_token(length, 0) / ASSUMED_FLOPS)
        plan.append((f"finetune {cell.name}", seconds))
    return plan


def finetune_passes(finetune: dict[str, Any], task: TaskConfig, budget: int | None, train_size: int | None,
                    dev_size: int | None, head_epochs: int = 0) -> tuple[float, float]:
    """(examples through forward and backward, examples through forward only) of one fine-tuning
    of a cell, as `finetuning.run` splits and scores. Dev (a file, a share of the training file
    or a cross-validation fold) is cut first and the budget taken from the rest; a held-out slice
    (`select_fraction`) comes out of the budget, picks the epoch and leaves dev to be scored once.
    About `epochs` epochs are scored however many `min_steps` adds; the head's epochs alone count
    as forward passes. `train_size` and `dev_size`: the task files' examples, None where unknown."""
    folds = task.cv_folds
    if train_size:
        if folds:
            dev, pool = train_size / folds, train_size * (folds - 1) / folds
        elif dev_size:
            dev, pool = dev_size, train_size
        else:
            dev = max(1, round(task.dev_fraction * train_size))
            pool = train_size - dev
    else:  # the size unknown: the budget (or 10,000) to train on, and a dev set in proportion
        pool = budget or 10_000
        dev = dev_size or (pool / (folds - 1) if folds else max(1, round(task.dev_fraction * pool)))
    examples = min(budget, pool) if budget else pool
    select = finetune.get("select_fraction") or 0
    held = round(select * examples)
    trained = examples - held
    batch, asked = finetune.get("batch_size", 32), finetune.get("epochs", 3)
    epochs = max(asked, math.ceil(finetune.get("min_steps", 0) / math.ceil(trained / batch)))
    every = max(1, epochs // asked)
    scored_epochs = 1 if finetune.get("keep_epoch") == "last" else epochs // every + (epochs % every > 0)
    scored = scored_epochs * held + dev if select else scored_epochs * dev
    return trained * epochs, scored + trained * head_epochs


def _flops_per_token(cfg: CompareConfig, name: str, vocab: int, seq_len: int) -> float:
    """Training FLOPs per token of `name`'s own network: a biLSTM (ELMo) or a softmax at every
    position (CLM) costs several times a masked LM's."""
    objective = get_objective(name)(Vocab(vocab, OWN_SPECIAL_IDS), seq_len, cfg.objective_options.get(name, {}))
    network = objective.build_model(resolve_model_config(
        cfg.model, vocab_size=vocab, layout=objective.layout, encoder_decoder=objective.architecture == "encoder_decoder"))
    return network.flops_per_token(seq_len, objective.predicted_fraction())


def batch_tokens(budget: dict[str, Any]) -> int:
    return budget.get("batch_size", 32) * budget.get("seq_len", 128) * budget.get("grad_accum", 1)


def budget_steps(budget: dict[str, Any], step_tokens: int) -> int:
    """The steps of a steps or tokens budget, each step reading `step_tokens`."""
    return max(1, int(budget["tokens"]) // step_tokens) if "tokens" in budget else int(budget.get("steps", 1000))


def train_tokens(data: Path) -> int:
    return json.loads((data / "manifest.json").read_text())["splits"]["train"]["tokens"]


BYTES_PER_TOKEN = 4.2
"""Bytes of text per token of an 8k-32k subword vocabulary (English Wikipedia 4.5, IMDB reviews
3.9), for estimates made before the corpus is prepared."""


def corpus_tokens(cfg: CompareConfig, domain: bool, out: Path | None) -> int:
    """Training tokens of the general or domain corpus: counted, once `out` holds it prepared,
    else guessed from the text's size (`ptmkit.data.corpus.text_bytes`)."""
    prepared = out / "data" / ("domain" if domain else "general") if out is not None else None
    if prepared is not None and (prepared / "manifest.json").is_file():
        return train_tokens(prepared)
    size = sum(map(text_bytes, list_corpus_files(cfg.domain_corpus if domain else cfg.corpus)))
    return max(1, int(size / BYTES_PER_TOKEN))


def _count_examples(task: TaskConfig, file: str | None) -> int | None:
    """The examples in a task file (`task.train` or `task.dev`) that holds one per line
    (classification, regression, seq2seq: jsonl, csv/tsv after the header, fastText, line-aligned
    pairs; or a dataset's rows), for --dry-run's estimate; None where that does not hold or the
    file cannot be read."""
    if task.type not in ("classify", "regress", "seq2seq") or not file:
        return None
    path = Path(file.split(",")[0])
    if hf_datasets.is_dataset(path):
        try:
            return hf_datasets.num_rows(path) or None
        except UserError:
            return None
    opener = {".gz": gzip.open, ".bz2": bz2.open}.get(path.suffix, open)
    try:
        if is_json_array(path):
            return None  # its lines are not its examples
        with opener(path, "rb") as f:
            lines = sum(1 for line in f if line.strip())
    except OSError:
        return None
    kind = path.name.removesuffix(path.suffix if path.suffix in (".gz", ".bz2") else "").rsplit(".", 1)[-1]
    return max(0, lines - (kind.lower() in ("csv", "tsv"))) or None
