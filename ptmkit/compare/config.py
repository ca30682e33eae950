"""The `ptmkit compare` configuration: one YAML file, validated key by key.

Every pre-training gets the same budget (steps, minutes or tokens); every fine-tuning cell the
same recipe. Scratch (path A) is always added; a `domain_corpus` adds path C
(general -> domain -> task) next to path B (general -> task).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ptmkit.checks import (FINETUNE_VALUES, TOKENIZER_VALUES, Check, check_keys, check_settings, choice, fail, label,
                           number, plain_name, whole)
from ptmkit.data.corpus import list_corpus_files
from ptmkit.data.hf_datasets import data_name
from ptmkit.data.segment import SEGMENTERS
from ptmkit.data.tokenizer import minimum_vocab_size
from ptmkit.errors import UserError
from ptmkit.fileio import read_yaml
from ptmkit.finetuning.data import flags_as_keys, glue_spec
from ptmkit.finetuning.registry import TASKS, get_task
from ptmkit.finetuning.run import FinetuneSpec, check_task_data
from ptmkit.finetuning.search import as_head_epochs, as_rates, select_fraction_for
from ptmkit.model.config import SIZES, resolve_model_config
from ptmkit.objectives import OBJECTIVES
from ptmkit.recipes import Recipe, available, load_recipe
from ptmkit.train.loop import PRECISIONS

PRETRAIN_VALUES: dict[str, Check] = {
    "steps": whole(1), "minutes": number(lambda v: v > 0, "> 0"), "tokens": whole(1),
    "batch_size": whole(1), "seq_len": whole(1), "lr": number(lambda v: v > 0, "> 0"),
    "warmup": whole(-1), "schedule": choice(("linear", "cosine", "constant")),
    "precision": choice(PRECISIONS), "weight_decay": number(lambda v: v >= 0, ">= 0"),
    "grad_accum": whole(1), "workers": whole(0)}
"""What `Compare.train_config` passes to TrainConfig, which checks ranges but not types."""
TASK_VALUES: dict[str, Check] = {
    "label_field": label, "dev_fraction": number(lambda v: 0 < v < 1, "in (0, 1)"), "cv_folds": whole(0),
    "max_length": whole(1), "negative_label": label, "source_field": label, "target_field": label}
"""A task entry's plain values; type, name, files, text_fields and label_budgets have their own checks."""

TOP_KEYS = {"corpus", "domain_corpus", "domain_objectives", "tokenizer", "model", "objectives", "objective_options",
            "pretrain", "domain_pretrain", "task", "tasks", "label_budgets", "seeds",
            "pretrain_seeds", "finetune", "text_field", "recipe", "segment", "title"}
TASK_KEYS = {"type", "name", "train", "dev", "text_fields", "data_dir", "label_budgets"} | set(TASK_VALUES)
RECIPE_PREFIX = "recipe:"
"""A recipe's rows in results.csv name it `recipe:<name>` in the objective column."""


def max_length(task: TaskConfig, finetune: dict[str, Any]) -> int:
    """What a task's cells truncate to: the task's own setting (a keyphrase task reads whole
    documents) over the comparison's (or its recipe's) `finetune.max_length`, else 128."""
    return task.max_length or finetune.get("max_length") or 128


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
    max_length: int | None = None
    """Tokens per example; None: `finetune.max_length`, else 128 (see `max_length`)."""
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
    domain_objectives: list[str] | None = None
    """The objectives path C continues on the domain corpus (each stage costs a pre-training and a
    row of cells); None: every objective."""
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
    """`recipe: NAME`: its staged pre-training joins path B as `recipe:NAME` (path C when some stage
    reads the domain corpus); its tokenizer, model and fine-tuning settings are the defaults of the
    whole comparison (scratch included)."""
    title: str = "ptmkit compare"
    """The report's heading."""
    source: str = "<config>"

    @property
    def systems(self) -> list[str]:
        """What path B pre-trains: the objectives, then a recipe of general text alone."""
        general_recipe = self.recipe is not None and not self.recipe.reads_domain
        return self.objectives + ([RECIPE_PREFIX + self.recipe.name] if general_recipe else [])

    @property
    def domain_systems(self) -> list[str]:
        """What path C pre-trains on the domain corpus after the general one: objectives continued
        there, then a recipe with domain stages."""
        if not self.domain_corpus:
            return []
        continued = self.objectives if self.domain_objectives is None else self.domain_objectives
        domain_recipe = self.recipe is not None and self.recipe.reads_domain
        return continued + ([RECIPE_PREFIX + self.recipe.name] if domain_recipe else [])

    @property
    def paths(self) -> list[str]:
        """A = scratch, B = general -> task, C = general -> domain -> task."""
        return ["A", "B", "C"] if self.domain_corpus else ["A", "B"]


def _unique(items: list, spot: str, fix: str, show: Callable[[Any], str] = repr) -> None:
    """A repeated seed, budget or objective would run (and report) the same cells twice."""
    seen: list = []
    for item in items:
        if item in seen:
            fail(f"{show(item)} is listed twice", spot, fix)
        seen.append(item)


def _paths(value: Any, where: str, base: Path) -> list[str]:
    items = value if isinstance(value, list) else [value]
    out = []
    for item in items:
        path = Path(str(item)).expanduser()
        path = path if path.is_absolute() else base / path
        if not path.exists():
            fail("path not found", f"{where}: {item}", "fix the path (relative paths start at the config file)")
        out.append(str(path))
    return out


def _corpus(value: Any, where: str, base: Path) -> list[str]:
    """Corpus paths, checked as pre-training will read them (no binary file, no empty directory,
    no DatasetDict), naming the config key."""
    paths = _paths(value, where, base)
    try:
        if paths:  # none is reported by the caller
            list_corpus_files(paths)
    except UserError as error:
        fail(error.what, f"{where}: {error.where}", error.fix)
    return paths


def _budget(value: Any, where: str) -> int | None:
    if value in ("full", "all", None):
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    fail(f"invalid label budget {value!r}", where, "use positive integers or `full`")
    return None


def _budgets(values: Any, where: str) -> list[int | None]:
    if not isinstance(values, list) or not values:
        fail("label budgets must be a list", where, "e.g. [100, 1000, full]")
    budgets = [_budget(b, where) for b in values]
    _unique(budgets, where, "list each label budget once (`full` and `all` are the same)",
            show=lambda b: "full" if b is None else repr(b))
    return budgets


def _seeds(values: Any, where: str, key: str) -> list[int]:
    if not (isinstance(values, list) and values
            and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in values)):
        fail(f"{key} must be a list of integers >= 0", where, "e.g. [0, 1, 2]")
    _unique(values, where, "list each seed once (a repeated seed repeats the same runs)")
    return values


def _data_path(value: Any, spot: str, base: Path) -> str:
    """A task file, or `SOURCE,TARGET` line-aligned files (seq2seq), each resolved from `base`."""
    return ",".join(_paths(part, spot, base)[0] for part in str(value).split(","))


def _task_type(kind: Any, spot: str) -> str:
    if isinstance(kind, str) and kind.startswith("glue:"):
        try:
            glue_spec(kind.split(":", 1)[1])
        except UserError as err:
            fail(err.what, spot, err.fix)
        return kind
    try:
        get_task(str(kind))
    except UserError:
        fail(f"unknown task type {kind!r}", spot, f"use one of {', '.join(TASKS)} or glue:<name>")
    return str(kind)


def _text_fields(value: Any, spot: str) -> list[str]:
    fields = [value] if isinstance(value, str) else value
    if not (isinstance(fields, list) and fields and all(isinstance(f, str) and f for f in fields)):
        fail(f"text_fields must be a field name or a list of them, not {value!r}", spot, "e.g. [sentence1, sentence2]")
    return list(fields)


def _task(values: dict, index: int, base: Path, where: str) -> TaskConfig:
    spot = f"{where}: tasks[{index}]"
    check_keys(values, TASK_KEYS, spot)
    kind = _task_type(values.get("type"), f"{spot}.type")
    glue = kind.startswith("glue:")
    default_name = kind.split(":", 1)[1] if glue else data_name(base / str(values.get("train", kind)))
    task = TaskConfig(type=kind, name=plain_name(values.get("name") or default_name, f"{spot}.name", "task name"))
    if glue:
        if "data_dir" not in values:
            fail("glue tasks need data_dir", spot, "add `data_dir: path/to/glue`")
        for own in sorted({"train", "dev", "text_fields", "label_field", "cv_folds"} & set(values)):
            fail(f"{kind} reads the files, fields and dev set of its GLUE folder", f"{spot}.{own}",
                 f"drop `{own}`, or use `type: classify` (or regress) with your own files")
        task.data_dir = _paths(values["data_dir"], f"{spot}.data_dir", base)[0]
    else:
        if "train" not in values:
            fail("task has no training file", spot, "add `train: PATH`")
        task.train = _data_path(values["train"], f"{spot}.train", base)
        task.dev = _data_path(values["dev"], f"{spot}.dev", base) if values.get("dev") else None
    task.text_fields = _text_fields(values.get("text_fields", ["text"]), f"{spot}.text_fields")
    plain = check_settings({k: v for k, v in values.items() if k in TASK_VALUES}, TASK_VALUES, spot)
    task.label_field = plain.get("label_field", task.label_field)
    task.dev_fraction = plain.get("dev_fraction", task.dev_fraction)
    task.cv_folds = plain.get("cv_folds", 0)
    if task.cv_folds == 1 or (task.cv_folds and task.dev):
        fail(f"cv_folds {task.cv_folds}: cross-validation needs 2 or more folds and no dev file",
              f"{spot}.cv_folds", "use 0 (a held-out dev_fraction) or K >= 2 without `dev`")
    task.max_length = plain.get("max_length", task.max_length)
    task.extra = {k: plain[k] for k in ("negative_label", "source_field", "target_field") if k in plain}
    if "label_budgets" in values:
        task.label_budgets = _budgets(values["label_budgets"], f"{spot}.label_budgets")
    return task


def _tasks(raw: Any, base: Path, where: str) -> list[TaskConfig]:
    if not isinstance(raw, list):
        fail("tasks must be a list", f"{where}: tasks", "write `tasks: [{type: classify, train: PATH}, ...]`")
    tasks = [_task(t, i, base, where) for i, t in enumerate(raw)]
    names = [t.name for t in tasks]
    for i, name in enumerate(names):
        if name in names[:i]:  # the report would merge the two tasks' rows as if they were seeds
            fail(f"two tasks are named {name!r}", f"{where}: tasks[{i}].name",
                  "give each task its own `name:` (a task is named after its train file or GLUE task otherwise)")
    return tasks


def _tokenizer(value: Any, spot: str, base: Path) -> dict[str, Any] | str:
    """A trained tokenizer's directory, or the `train_tokenizer` settings for one."""
    if isinstance(value, str):
        return _paths(value, spot, base)[0]
    if not isinstance(value, dict):
        fail(f"not a tokenizer: {value!r}", spot,
              "give a tokenizer directory or e.g. {kind: wordpiece, vocab_size: 8192}")
    settings = check_settings(value, TOKENIZER_VALUES, spot)
    kind = settings.get("kind", "bpe")  # train_tokenizer's default
    if "vocab_size" in settings and settings["vocab_size"] < minimum_vocab_size(kind):
        fail(f"vocab_size {settings['vocab_size']} is too small for a {kind} tokenizer", f"{spot}.vocab_size",
              f"use {minimum_vocab_size(kind)} or more")
    return settings


def _model(value: Any, spot: str, base: Path | None) -> str | dict:
    """A size name, a mapping of model fields, or a model YAML file (from `base`, the config's
    directory; None: left as written, for a recipe's own model, which its stages read as it is),
    checked the way pre-training will resolve it."""
    if isinstance(value, str) and value.endswith((".yaml", ".yml")):
        value = _paths(value, spot, base)[0] if base is not None else value
    elif not isinstance(value, dict) and not (isinstance(value, str) and value in SIZES):
        fail(f"unknown model {value!r}", spot, f"use a size ({', '.join(SIZES)}), a mapping of model fields "
              "or a model YAML file")
    try:
        resolve_model_config(value, vocab_size=8000, layout="bert")
    except UserError as err:  # a file's errors name that file; a mapping's, `model[.FIELD]` in it
        field_name = err.where.partition("model")[2] if err.where.startswith("model") else f" ({err.where})"
        raise UserError(err.what, err.where if isinstance(value, str) else spot + field_name, err.fix) from None
    except (TypeError, ValueError, yaml.YAMLError) as err:  # a file that is not YAML (or not UTF-8)
        fail(f"invalid model: {str(err).splitlines()[0]}", spot,
              "write fields as `hidden: 256` lines, numbers unquoted, in UTF-8")
    return value


def _recipe(value: Any, spot: str, base: Path) -> Recipe:
    """A shipped recipe by name, or a recipe YAML file (from the config's directory)."""
    name = str(value)
    if name.endswith((".yaml", ".yml")):
        return load_recipe(_paths(name, spot, base)[0])
    if name not in available():
        fail(f"unknown recipe {name!r}", spot, f"use one of {', '.join(available())} or a recipe YAML file")
    return load_recipe(name)


def _objectives(value: Any, spot: str) -> list[str]:
    if not isinstance(value, list):
        fail(f"objectives must be a list, not {value!r}", spot, "e.g. [mlm, clm] (or [] next to a recipe)")
    for name in value:
        if not isinstance(name, str) or name not in (*OBJECTIVES, "scratch"):
            fail(f"unknown objective {name!r}", spot, f"use names from: {', '.join(sorted(OBJECTIVES))}")
    _unique(value, spot, "list each objective once")
    return [o for o in value if o != "scratch"]  # path A: always there, so naming it changes nothing


def _objective_options(value: Any, spot: str) -> dict[str, dict[str, Any]]:
    """Per objective, options its `Options` dataclass accepts (checked now, not after the data is
    prepared)."""
    if not isinstance(value, dict):
        fail("must be a mapping", spot, "write `objective_options: {mlm: {mask_prob: 0.15}}`")
    for name, options in value.items():
        here = f"{spot}.{name}"
        if name not in OBJECTIVES:
            fail(f"unknown objective {name!r}", here, f"use names from: {', '.join(sorted(OBJECTIVES))}")
        if not isinstance(options, dict):
            fail("must be a mapping", here, "write `option: value` pairs")
        try:
            OBJECTIVES[name].parse_options(dict(options))
        except UserError as err:  # its where is `objective_options[.OPTION]`: put the objective in
            option = err.where.partition("objective_options")[2]
            raise UserError(err.what, here + option, err.fix) from None
        except (TypeError, ValueError) as err:
            fail(f"invalid options: {err}", here, "write numbers unquoted")
    return value


def load_compare_config(path: str | Path) -> CompareConfig:
    """Read and validate a compare YAML; every problem is one UserError naming the key. Each
    task's files are read too (a misnamed field would otherwise fail every cell, after the
    pre-trainings)."""
    path = Path(path)
    cfg = parse_compare_config(read_yaml(path, "--config") or {}, str(path), path.parent)
    check_task_files(cfg)
    return cfg


def finetune_recipe(cfg: CompareConfig, scratch: bool) -> dict[str, Any]:
    """The fine-tuning settings of a cell: the config's `finetune` over the defaults, with
    `scratch_lr` as scratch's rate."""
    recipe = {"epochs": 3, "lr": 5e-5, "batch_size": 32, **cfg.finetune}
    if "scratch_lr" in recipe and "select_fraction" not in recipe:
        # scratch and the pre-trained cells may try different numbers of rates: both hold out the
        # share the larger search needs, so that they pick their epochs the same way
        runs = max(len(as_rates(recipe["lr"])), len(as_rates(recipe["scratch_lr"])))
        recipe["select_fraction"] = select_fraction_for(None, runs * len(as_head_epochs(recipe.get("head_epochs", 0))))
    if scratch and "scratch_lr" in recipe:
        recipe["lr"] = recipe["scratch_lr"]
    return recipe


def recipe_search(recipe: dict[str, Any]) -> tuple[list[float], list[int], float]:
    """A cell recipe's learning rates, head-epoch counts, and the held-out share that chooses
    among them (and the epoch)."""
    rates, heads = as_rates(recipe["lr"]), as_head_epochs(recipe.get("head_epochs", 0))
    return rates, heads, select_fraction_for(recipe.get("select_fraction"), len(rates) * len(heads))


def check_task_files(cfg: CompareConfig) -> None:
    for task in cfg.tasks:
        spec = FinetuneSpec(task=task.type, init="scratch", out=Path(), train=task.train, dev=task.dev,
                            data_dir=task.data_dir, text_fields=task.text_fields, label_field=task.label_field,
                            **task.extra)
        try:
            check_task_data(spec)
        except UserError as err:  # the fix names CLI flags; here they are the task's keys
            raise UserError(f"task {task.name}: {err.what}", flags_as_keys(err.where), flags_as_keys(err.fix)) from None


def parse_compare_config(values: dict, where: str, base: Path) -> CompareConfig:
    check_keys(values, TOP_KEYS, where)
    if "corpus" not in values:
        fail("no corpus", where, "add `corpus: [PATH, ...]` (general unlabelled text)")
    if "task" in values and "tasks" in values:
        fail("both task and tasks given", where, "use `tasks: [...]` for several")
    raw_tasks = values.get("tasks") or ([values["task"]] if "task" in values else [])
    if not raw_tasks:
        fail("no task", where, "add `task: {type: classify, train: PATH, ...}`")
    cfg = CompareConfig(corpus=_corpus(values["corpus"], f"{where}: corpus", base),
                        tasks=_tasks(raw_tasks, base, where), source=where)
    if not cfg.corpus:
        fail("empty corpus", f"{where}: corpus", "list at least one file of unlabelled text")
    if values.get("domain_corpus"):
        cfg.domain_corpus = _corpus(values["domain_corpus"], f"{where}: domain_corpus", base)
    if "recipe" in values:
        cfg.recipe = _recipe(values["recipe"], f"{where}: recipe", base)
        if cfg.recipe.reads_domain and not cfg.domain_corpus:
            fail(f"recipe {cfg.recipe.name} has stages on the domain corpus", f"{where}: recipe",
                  "add `domain_corpus: [PATH, ...]`, or choose a recipe of general text")
        # the recipe's settings are checked like the config's own, naming the recipe file
        cfg.tokenizer = _tokenizer(dict(cfg.recipe.tokenizer), f"{cfg.recipe.source}: tokenizer", base)
        cfg.model = _model(cfg.recipe.model, f"{cfg.recipe.source}: model", None)
        cfg.finetune = check_settings(dict(cfg.recipe.finetune), FINETUNE_VALUES, f"{cfg.recipe.source}: finetune")
        if "model" in values:
            fail(f"`model:` next to `recipe: {cfg.recipe.name}`", f"{where}: model",
                 f"drop `model:`: the recipe's model ({cfg.recipe.model}) is every cell's, scratch included")
    cfg.objectives = _objectives(values.get("objectives", [] if cfg.recipe else cfg.objectives), f"{where}: objectives")
    if "domain_objectives" in values:
        spot = f"{where}: domain_objectives"
        if not cfg.domain_corpus:
            fail("domain_objectives without a domain_corpus", spot, "add `domain_corpus: [PATH, ...]` or drop it")
        chosen = _objectives(values["domain_objectives"], spot)
        if not chosen:
            fail("no objective continues on the domain corpus", spot, "name at least one, or drop domain_corpus")
        for name in chosen:
            if name not in cfg.objectives:
                fail(f"{name!r} is not one of the objectives", spot,
                      f"choose from objectives: {', '.join(cfg.objectives)}")
        cfg.domain_objectives = chosen
    if values.get("segment") is not None:
        if not isinstance(values["segment"], str) or values["segment"] not in SEGMENTERS:
            fail(f"unknown word segmenter {values['segment']!r}", f"{where}: segment",
                  f"use one of: {', '.join(SEGMENTERS)}")
        cfg.segment = str(values["segment"])
    if "tokenizer" in values:
        cfg.tokenizer = _tokenizer(values["tokenizer"], f"{where}: tokenizer", base)
    if "model" in values:
        cfg.model = _model(values["model"], f"{where}: model", base)
    if "objective_options" in values:
        cfg.objective_options = _objective_options(values["objective_options"], f"{where}: objective_options")
    if "text_field" in values:
        if not isinstance(values["text_field"], str) or not values["text_field"]:
            fail(f"not a field name: {values['text_field']!r}", f"{where}: text_field", "e.g. `text_field: text`")
        cfg.text_field = values["text_field"]
    if "title" in values:
        if not isinstance(values["title"], str) or not values["title"].strip():
            fail(f"not a title: {values['title']!r}", f"{where}: title", "e.g. `title: SST-2 at three label budgets`")
        cfg.title = values["title"].strip()
    for key in ("pretrain", "domain_pretrain"):
        if key in values:
            budget = check_settings(values[key], PRETRAIN_VALUES, f"{where}: {key}")
            budgets = [k for k in ("steps", "minutes", "tokens") if k in budget]
            if not budgets:  # TrainConfig would run 1,000 steps, not the 500 an absent domain_pretrain gets
                fail(f"{key} has no budget", f"{where}: {key}", "give one of steps, minutes or tokens, e.g. `steps: 500`")
            if len(budgets) > 1:
                fail(f"{key} has several budgets ({', '.join(budgets)})", f"{where}: {key}",
                      "give exactly one of steps, minutes, tokens: the same for every objective")
            setattr(cfg, key, budget)
    if "finetune" in values:
        cfg.finetune = {**cfg.finetune, **check_settings(values["finetune"], FINETUNE_VALUES, f"{where}: finetune")}
    cfg.label_budgets = _budgets(values.get("label_budgets", ["full"]), f"{where}: label_budgets")
    for key in ("seeds", "pretrain_seeds"):
        if key in values:
            setattr(cfg, key, _seeds(values[key], f"{where}: {key}", key))
    if len(cfg.pretrain_seeds) > len(cfg.seeds):  # fine-tuning seed i starts from pre-training seed i
        fail(f"{len(cfg.pretrain_seeds)} pretrain_seeds for {len(cfg.seeds)} seeds: the extra pre-trainings "
             "would start no cell", f"{where}: pretrain_seeds", "list at most as many pretrain_seeds as seeds")
    return cfg
