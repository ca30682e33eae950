"""The `ptmkit compare` configuration: one YAML file, validated key by key.

Every pre-training gets the same budget (steps, minutes or tokens); every fine-tuning cell the
same recipe. Scratch (path A) is always added; a `domain_corpus` adds path C
(general -> domain -> task) next to path B (general -> task).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ptmkit.data.segment import SEGMENTERS
from ptmkit.errors import UserError
from ptmkit.finetuning.registry import TASKS, get_task
from ptmkit.objectives import OBJECTIVES
from ptmkit.recipes import Recipe, load_recipe

TOP_KEYS = {"corpus", "domain_corpus", "tokenizer", "model", "objectives", "objective_options",
            "pretrain", "domain_pretrain", "task", "tasks", "label_budgets", "seeds",
            "pretrain_seeds", "finetune", "text_field", "recipe", "segment"}
PRETRAIN_KEYS = {"steps", "minutes", "tokens", "batch_size", "seq_len", "lr", "warmup", "schedule",
                 "precision", "weight_decay", "grad_accum", "workers"}
TASK_KEYS = {"type", "name", "train", "dev", "text_fields", "label_field", "dev_fraction",
             "data_dir", "max_length", "negative_label", "source_field", "target_field", "label_budgets",
             "cv_folds"}
FINETUNE_KEYS = {"epochs", "min_steps", "lr", "scratch_lr", "batch_size", "patience", "warmup_ratio", "max_length",
                 "precision", "select_fraction", "layer_decay", "pooling", "weight_decay", "freeze_embeddings"}
RECIPE_PREFIX = "recipe:"
"""A recipe's rows in results.csv name it `recipe:<name>` in the objective column."""


def job_name(objective: str, seed: int, domain: bool = False) -> str:
    """A pre-training run's directory under DIR/pretrain (`recipe:NAME` becomes `recipe-NAME`)."""
    return f"{objective.replace(':', '-')}-s{seed}" + ("-domain" if domain else "")


@dataclass
class TaskConfig:
    """One downstream task of the comparison."""

    type: str
    name: str
    train: str | None = None
    dev: str | None = None
    text_fields: list[str] = field(default_factory=lambda: ["text"])
    label_field: str = "label"
    dev_fraction: float = 0.1
    cv_folds: int = 0
    """No dev file: k-fold cross-validation, every cell fine-tunes once per fold and scores all
    of the training data (see `FinetuneSpec.cv_folds`); 0 holds out `dev_fraction`."""
    data_dir: str | None = None
    max_length: int = 128
    extra: dict[str, str] = field(default_factory=dict)
    """Task-specific fields passed to fine-tuning as they are (negative_label, source_field, ...)."""
    label_budgets: list[int | None] | None = None
    """This task's own label budgets (e.g. a small task in full next to SST-2 at 1,000);
    None: the comparison's `label_budgets`."""


@dataclass
class CompareConfig:
    corpus: list[str]
    tasks: list[TaskConfig]
    domain_corpus: list[str] = field(default_factory=list)
    tokenizer: dict[str, Any] | str = field(default_factory=lambda: {"kind": "bpe", "vocab_size": 8000})
    model: str | dict = "mini"
    objectives: list[str] = field(default_factory=lambda: ["mlm"])
    objective_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    pretrain: dict[str, Any] = field(default_factory=lambda: {"steps": 1000})
    domain_pretrain: dict[str, Any] = field(default_factory=lambda: {"steps": 500})
    label_budgets: list[int | None] = field(default_factory=lambda: [None])
    seeds: list[int] = field(default_factory=lambda: [0])
    pretrain_seeds: list[int] = field(default_factory=lambda: [0])
    finetune: dict[str, Any] = field(default_factory=dict)
    text_field: str = "text"
    segment: str | None = None
    """`jieba`: store word boundaries from that segmenter when preparing the corpora (Chinese
    whole-word masking, see `ptmkit.objectives.wwm`)."""
    recipe: Recipe | None = None
    """`recipe: NAME`: its staged pre-training joins path B as `recipe:NAME`; its tokenizer, model
    and fine-tuning settings are the defaults of the whole comparison (scratch included)."""
    source: str = "<config>"

    @property
    def systems(self) -> list[str]:
        """What path B pre-trains: the objectives, then the recipe."""
        return self.objectives + ([RECIPE_PREFIX + self.recipe.name] if self.recipe else [])

    @property
    def paths(self) -> list[str]:
        """A = scratch, B = general -> task, C = general -> domain -> task."""
        return ["A", "B", "C"] if self.domain_corpus else ["A", "B"]


def _fail(what: str, where: str, fix: str) -> None:
    raise UserError(what, where, fix)


def _check_keys(values: dict, allowed: set[str], where: str) -> None:
    if not isinstance(values, dict):
        _fail("must be a mapping", where, "write `key: value` lines")
    unknown = sorted(set(values) - allowed)
    if unknown:
        _fail(f"unknown key(s) {', '.join(unknown)}", where, f"use only: {', '.join(sorted(allowed))}")


def _paths(value: Any, where: str, base: Path) -> list[str]:
    items = value if isinstance(value, list) else [value]
    out = []
    for item in items:
        path = Path(str(item)).expanduser()
        path = path if path.is_absolute() else base / path
        if not path.exists():
            _fail("path not found", f"{where}: {item}", "fix the path (relative paths start at the config file)")
        out.append(str(path))
    return out


def _budget(value: Any, where: str) -> int | None:
    if value in ("full", "all", None):
        return None
    if isinstance(value, int) and value > 0:
        return value
    _fail(f"invalid label budget {value!r}", where, "use positive integers or `full`")
    return None


def _budgets(values: Any, where: str) -> list[int | None]:
    if not isinstance(values, list) or not values:
        _fail("label budgets must be a list", where, "e.g. [100, 1000, full]")
    return [_budget(b, where) for b in values]


def _data_path(value: Any, spot: str, base: Path) -> str:
    """A task file, or `SOURCE,TARGET` line-aligned files (seq2seq), each resolved from `base`."""
    return ",".join(_paths(part, spot, base)[0] for part in str(value).split(","))


def _task(values: dict, index: int, base: Path, where: str) -> TaskConfig:
    spot = f"{where}: tasks[{index}]"
    _check_keys(values, TASK_KEYS, spot)
    kind = str(values.get("type"))
    glue = kind.startswith("glue:")
    if not glue:
        try:
            get_task(kind)
        except UserError:
            _fail(f"unknown task type {kind!r}", f"{spot}.type", f"use one of {', '.join(TASKS)} or glue:<name>")
    default_name = kind.split(":", 1)[1] if glue else Path(str(values.get("train", kind))).stem
    task = TaskConfig(type=kind, name=str(values.get("name") or default_name))
    if glue:
        if "data_dir" not in values:
            _fail("glue tasks need data_dir", spot, "add `data_dir: path/to/glue`")
        task.data_dir = _paths(values["data_dir"], f"{spot}.data_dir", base)[0]
    else:
        if "train" not in values:
            _fail("task has no training file", spot, "add `train: PATH`")
        task.train = _data_path(values["train"], f"{spot}.train", base)
        task.dev = _data_path(values["dev"], f"{spot}.dev", base) if values.get("dev") else None
    fields = values.get("text_fields", ["text"])
    task.text_fields = [fields] if isinstance(fields, str) else list(fields)
    task.label_field = str(values.get("label_field", "label"))
    task.dev_fraction = float(values.get("dev_fraction", 0.1))
    task.cv_folds = int(values.get("cv_folds", 0))
    if task.cv_folds == 1 or task.cv_folds < 0 or (task.cv_folds and task.dev):
        _fail(f"cv_folds {task.cv_folds}: cross-validation needs 2 or more folds and no dev file",
              f"{spot}.cv_folds", "use 0 (a held-out dev_fraction) or K >= 2 without `dev`")
    task.max_length = int(values.get("max_length", 128))
    task.extra = {k: str(values[k]) for k in ("negative_label", "source_field", "target_field") if k in values}
    if "label_budgets" in values:
        task.label_budgets = _budgets(values["label_budgets"], f"{spot}.label_budgets")
    return task


def load_compare_config(path: str | Path) -> CompareConfig:
    """Read and validate a compare YAML; every problem is one UserError naming the key."""
    path = Path(path)
    if not path.is_file():
        _fail("config file not found", str(path), "check the --config path")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise UserError(f"invalid YAML: {str(err).splitlines()[0]}", str(path), "fix the syntax") from None
    return parse_compare_config(values, str(path), path.parent)


def parse_compare_config(values: dict, where: str, base: Path) -> CompareConfig:
    _check_keys(values, TOP_KEYS, where)
    if "corpus" not in values:
        _fail("no corpus", where, "add `corpus: [PATH, ...]` (general unlabelled text)")
    if "task" in values and "tasks" in values:
        _fail("both task and tasks given", where, "use `tasks: [...]` for several")
    raw_tasks = values.get("tasks") or ([values["task"]] if "task" in values else [])
    if not raw_tasks:
        _fail("no task", where, "add `task: {type: classify, train: PATH, ...}`")
    cfg = CompareConfig(corpus=_paths(values["corpus"], f"{where}: corpus", base),
                        tasks=[_task(t, i, base, where) for i, t in enumerate(raw_tasks)], source=where)
    if values.get("domain_corpus"):
        cfg.domain_corpus = _paths(values["domain_corpus"], f"{where}: domain_corpus", base)
    if "recipe" in values:
        cfg.recipe = load_recipe(str(values["recipe"]))
        if cfg.domain_corpus:
            _fail("a recipe runs on the general corpus only (path B)", f"{where}: recipe",
                  "drop domain_corpus, or compare the recipe in a config of its own")
        cfg.tokenizer, cfg.model = dict(cfg.recipe.tokenizer), cfg.recipe.model
        cfg.finetune = dict(cfg.recipe.finetune)
    objectives = values.get("objectives", [] if cfg.recipe else cfg.objectives)
    for name in objectives:
        if name not in OBJECTIVES:
            _fail(f"unknown objective {name!r}", f"{where}: objectives",
                  f"use names from: {', '.join(sorted(OBJECTIVES))}")
    cfg.objectives = [o for o in objectives if o != "scratch"]
    if values.get("segment") is not None:
        if values["segment"] not in SEGMENTERS:
            _fail(f"unknown word segmenter {values['segment']!r}", f"{where}: segment",
                  f"use one of: {', '.join(SEGMENTERS)}")
        cfg.segment = str(values["segment"])
    for key in ("tokenizer", "model", "objective_options", "text_field"):
        if key in values:
            setattr(cfg, key, values[key])
    if isinstance(cfg.tokenizer, str):
        cfg.tokenizer = _paths(cfg.tokenizer, f"{where}: tokenizer", base)[0]
    for key in ("pretrain", "domain_pretrain"):
        if key in values:
            _check_keys(values[key], PRETRAIN_KEYS, f"{where}: {key}")
            budgets = [k for k in ("steps", "minutes", "tokens") if k in values[key]]
            if len(budgets) > 1:
                _fail(f"{key} has several budgets ({', '.join(budgets)})", f"{where}: {key}",
                      "give exactly one of steps, minutes, tokens: the same for every objective")
            setattr(cfg, key, dict(values[key]))
    if "finetune" in values:
        _check_keys(values["finetune"], FINETUNE_KEYS, f"{where}: finetune")
        cfg.finetune = {**cfg.finetune, **values["finetune"]}
    cfg.label_budgets = _budgets(values.get("label_budgets", ["full"]), f"{where}: label_budgets")
    for key in ("seeds", "pretrain_seeds"):
        if key in values:
            seeds = values[key]
            if not (isinstance(seeds, list) and seeds and all(isinstance(s, int) for s in seeds)):
                _fail(f"{key} must be a list of integers", f"{where}: {key}", "e.g. [0, 1, 2]")
            setattr(cfg, key, seeds)
    return cfg
