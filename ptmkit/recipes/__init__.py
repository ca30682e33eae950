"""Recipes: named, shipped pre-training + fine-tuning settings a user applies to their own data.

A recipe is one YAML file: the tokenizer and model to use, a sequence of pre-training stages
(each starting from the previous one's weights) sharing one wall-clock budget, and the
fine-tuning settings its models were tuned with. A stage reads the general corpus, or with
`corpus: domain` the domain corpus (general -> domain -> task in one recipe). `ptmkit pretrain --recipe NAME`,
`ptmkit finetune --recipe NAME` and `recipe: NAME` in a compare config read it by name
(`ptmkit/recipes/NAME.yaml`) or from a path.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ptmkit.checks import (FINETUNE_VALUES as COMPARE_FINETUNE_VALUES, TOKENIZER_VALUES, check_keys, check_settings,
                           number_or_none, plain_name)
from ptmkit.errors import UserError
from ptmkit.fileio import read_yaml

RECIPES_DIR = Path(__file__).parent
TOP_KEYS = {"name", "summary", "tokenizer", "model", "minutes", "stages", "finetune"}
STAGE_KEYS = {"objective", "objective_options", "train", "corpus"}
CORPORA = ("general", "domain")
FINETUNE_VALUES = {key: check for key, check in COMPARE_FINETUNE_VALUES.items() if key != "scratch_lr"}
"""A compare config's fine-tuning settings but path A's own rate (a recipe has no scratch cells)."""
FINETUNE_KEYS = set(FINETUNE_VALUES)


@dataclass(frozen=True)
class Stage:
    objective: str
    objective_options: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    """TrainConfig values; the last stage's time budget is whatever the recipe's minutes leave."""
    corpus: str = "general"
    """Which text the stage trains on: the general corpus, or the domain corpus."""


@dataclass(frozen=True)
class Recipe:
    name: str
    stages: tuple[Stage, ...]
    minutes: float
    tokenizer: dict[str, Any] = field(default_factory=lambda: {"kind": "wordpiece", "vocab_size": 8192})
    model: str | dict = "mini"
    finetune: dict[str, Any] = field(default_factory=dict)
    """FinetuneSpec defaults; `lr` may be a list, searched on held-out training data."""
    summary: str = ""
    source: str = field(default="", compare=False)
    """Where it was read from: the same recipe read from another path is the same recipe."""

    @property
    def reads_domain(self) -> bool:
        """Some stage trains on the domain corpus: the recipe needs one, and compares as path C."""
        return any(stage.corpus == "domain" for stage in self.stages)


def available() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def load_recipe(name: str) -> Recipe:
    """A shipped recipe by name, or a recipe YAML file by path."""
    path = Path(name)
    if not (path.suffix in (".yaml", ".yml") and path.is_file()):
        path = RECIPES_DIR / f"{name}.yaml"
        if not path.is_file():
            raise UserError(f"unknown recipe {name!r}", "--recipe",
                            f"use one of {', '.join(available())} or a recipe YAML file")
    return parse_recipe(read_yaml(path, "--recipe") or {}, str(path))


def _numbers(values: dict[str, Any]) -> dict[str, Any]:
    """`1e-3` text as the float it spells: YAML 1.1 reads it as a string (as in a compare config)."""
    return {key: value if (number := number_or_none(value)) is None else number for key, value in values.items()}


def _check_stage(stage: Stage, spot: str, last: bool) -> None:
    """A stage's options and training settings, checked when the recipe is read: a bad one in a
    later stage must not surface after the earlier stages have trained. An earlier stage needs a
    length of its own: without one it trained until only the later stages' shares were left."""
    from ptmkit.objectives import OBJECTIVES
    from ptmkit.train.loop import TrainConfig
    objective = OBJECTIVES[stage.objective]
    # text for a number would pass an Options class without checks of its own, and fail inside the stage
    defaults = {option.name: option.default for option in dataclasses.fields(objective.Options)}
    for key, value in stage.objective_options.items():
        default = defaults.get(key)  # an unknown key: parse_options names it
        if isinstance(default, (int, float)) and not isinstance(default, bool) and number_or_none(value) is None:
            raise UserError(f"objective option {key} must be a number, not {value!r}",
                            f"{spot}.objective_options.{key}", f"write an unquoted number, e.g. `{key}: {default}`")
    try:
        options = objective.parse_options(dict(stage.objective_options))
    except UserError as err:  # its where is `objective_options[.OPTION]`
        raise UserError(err.what, f"{spot}.{err.where}", err.fix) from None
    unknown = sorted(set(stage.train) - {f.name for f in dataclasses.fields(TrainConfig)})
    if unknown:
        raise UserError(f"unknown training option(s) {', '.join(unknown)}", f"{spot}.train",
                        "use TrainConfig names (batch_size, seq_len, lr, warmup, precision, ...)")
    try:
        TrainConfig(**stage.train)
    except UserError as err:  # its where is the flag, e.g. --batch-size
        raise UserError(err.what, f"{spot}.train.{err.where.lstrip('-').replace('-', '_')}", err.fix) from None
    except (TypeError, ValueError) as err:
        raise UserError(f"bad training option: {err}", f"{spot}.train", "write numbers unquoted") from None
    length = [key for key in ("steps", "max_minutes") if key in stage.train]
    if last and length:
        raise UserError(f"the last stage sets its own {length[0]}", f"{spot}.train.{length[0]}",
                        "drop it: the last stage trains for whatever the budget leaves (set the recipe's `minutes`)")
    if not last and not (length or getattr(options, "epochs", 0)):
        raise UserError(f"stage {stage.objective} comes before the last one but has no length", f"{spot}.train",
                        "give it `steps` or `max_minutes` (the last stage trains for what the budget leaves)")


def parse_recipe(values: dict, where: str) -> Recipe:
    from ptmkit.objectives import OBJECTIVES
    check_keys(values, TOP_KEYS, where)
    stages = values.get("stages")
    if not isinstance(stages, list) or not stages:
        raise UserError("a recipe needs stages", f"{where}: stages", "add `stages: [{objective: mlm}]`")
    parsed = []
    for i, stage in enumerate(stages):
        spot = f"{where}: stages[{i}]"
        check_keys(stage, STAGE_KEYS, spot)
        objective = stage.get("objective")
        if not isinstance(objective, str) or objective not in OBJECTIVES:
            raise UserError(f"unknown objective {objective!r}", f"{spot}.objective",
                            f"use one of {', '.join(sorted(OBJECTIVES))}")
        for key in ("objective_options", "train"):
            if not isinstance(stage.get(key) or {}, dict):
                raise UserError("must be a mapping", f"{spot}.{key}", "write `key: value` lines")
        corpus = stage.get("corpus", "general")
        if corpus not in CORPORA:
            raise UserError(f"unknown corpus {corpus!r}", f"{spot}.corpus", "use general or domain")
        parsed.append(Stage(objective, _numbers(stage.get("objective_options") or {}), _numbers(stage.get("train") or {}),
                            corpus))
        _check_stage(parsed[-1], spot, last=i == len(stages) - 1)
    minutes = values.get("minutes")
    if not isinstance(minutes, (int, float)) or minutes <= 0:
        raise UserError(f"minutes must be a positive number, not {minutes!r}", f"{where}: minutes",
                        "e.g. `minutes: 30` (wall clock for all stages together)")
    finetune = check_settings(values.get("finetune") or {}, FINETUNE_VALUES, f"{where}: finetune")
    optional = {key: values[key] for key in ("tokenizer", "model") if values.get(key) is not None}
    if "tokenizer" in optional:
        optional["tokenizer"] = check_settings(optional["tokenizer"], TOKENIZER_VALUES, f"{where}: tokenizer")
    name = plain_name(values.get("name") or Path(where).stem, f"{where}: name", "recipe name")
    return Recipe(name=name, stages=tuple(parsed), minutes=float(minutes), finetune=finetune,
                  summary=str(values.get("summary", "")), source=where, **optional)
