"""`ptmkit pretrain --recipe NAME`: a recipe's stages, one after the other, in one wall-clock budget.

Layout of the run directory::

    data/                    the corpus prepared with the recipe's tokenizer (with --corpus)
    data-domain/             the domain corpus, likewise (with --domain-corpus, for `corpus: domain` stages)
    stages/<i>-<objective>/  one ordinary pre-training run per stage, each initialised from the last
    config.yaml model.safetensors tokenizer/   the final stage's model: `--init RUN` reads it as usual
    summary.json             every stage's time and tokens, and their totals
    recipe.yaml              the recipe as it was run
    recipe_run.json          its budget, seed and --data, kept by --resume

The budget is wall clock for all stages together (model building, evaluation and saving included);
an earlier stage trains its own steps but always leaves the last one 10% of the budget and its
reserve; the last stage trains for whatever the earlier ones left, less that reserve for its final
evaluation and save. Data preparation is not counted: it is shared with whatever the run is compared with.
A finished stage is never repeated, so an interrupted recipe continues with `--resume`.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from ptmkit.data.corpus import read_texts
from ptmkit.data.shards import TokenShards, prepare
from ptmkit.data.tokenizer import Tokenizer, train_tokenizer
from ptmkit.errors import UserError
from ptmkit.fileio import copy_items, write_text_atomic
from ptmkit.pretraining import PretrainSpec, check_corpus, check_run_dir, pretrain
from ptmkit.recipes import Recipe
from ptmkit.train.checkpoint import latest_checkpoint
from ptmkit.train.loop import UNBOUNDED_STEPS, TrainConfig

LAST_SHARE = 0.1
"""Share of the budget an earlier stage always leaves the last one, however many steps it asks for."""
RESERVE_SECONDS, RESERVE_SHARE = 20.0, 0.15
"""Kept back from the last stage's training time for building the model, its one validation and
its save (the trainer's clock counts training steps only): 20 s, or 15% of a budget under 133 s."""
SETTINGS_FILE = "recipe_run.json"
"""The budget, seed, --data and --domain-data a recipe run started with, which --resume keeps."""
DOMAIN_DATA = "data-domain"
FINAL_FILES = ("config.yaml", "model.safetensors", "tokenizer", "metrics.jsonl", "eval.json", "vectors.txt")


@dataclasses.dataclass(kw_only=True)
class RecipeRun:
    recipe: Recipe
    out: Path
    data: Path | None = None
    corpus: list[str] = dataclasses.field(default_factory=list)
    domain_data: Path | None = None
    domain_corpus: list[str] = dataclasses.field(default_factory=list)
    """The text of the `corpus: domain` stages (prepared, or raw); refused when no stage reads it."""
    tokenizer: Path | None = None
    text_field: str = "text"
    minutes: float | None = None
    """Overrides the recipe's budget."""
    seed: int | None = None
    """None: 0, or on --resume the seed the run started with."""
    progress: bool = True
    overwrite: bool = False
    resume: bool = False
    """Continue the stages already in `out` (none yet is fine); False needs a new or empty `out`."""


def pretrain_recipe(run: RecipeRun) -> dict[str, Any]:
    """Run (or continue) every stage of the recipe; returns the summary written to OUT/summary.json."""
    if not run.resume:
        check_run_dir(run.out, resume=False, overwrite=run.overwrite)
    run = _with_saved_settings(run)
    _check_domain_text(run)
    _check_text(run)
    budget = 60.0 * (run.minutes if run.minutes is not None else run.recipe.minutes)
    if run.overwrite and run.out.is_dir() and not run.resume:
        shutil.rmtree(run.out)
    created = not run.out.is_dir()
    run.out.mkdir(parents=True, exist_ok=True)
    (run.out / "recipe.yaml").write_text(yaml.safe_dump(_recipe_dict(run.recipe), sort_keys=False))
    (run.out / SETTINGS_FILE).write_text(json.dumps(
        {"minutes": budget / 60, "seed": run.seed, "data": str(run.data.resolve()) if run.data else None,
         "domain_data": str(run.domain_data.resolve()) if run.domain_data else None}, indent=2))
    try:
        corpora, prepare_seconds = _data(run)
    except UserError:  # e.g. the recipe's tokenizer does not fit the corpus: leave nothing behind
        if created:
            shutil.rmtree(run.out, ignore_errors=True)
        raise
    spent, stages, init = 0.0, [], None
    for i, stage in enumerate(run.recipe.stages):
        stage_dir = run.out / "stages" / f"{i}-{stage.objective}"
        summary_path = stage_dir / "summary.json"
        if not summary_path.is_file():
            last = i == len(run.recipe.stages) - 1
            # an earlier stage leaves the last one its reserve and a share of the budget to train
            left = budget - spent - min(RESERVE_SECONDS, RESERVE_SHARE * budget) - (0.0 if last else LAST_SHARE * budget)
            if left <= 0:
                raise UserError(f"the earlier stages used the whole {budget / 60:g}-minute budget before "
                                f"stage {i} ({stage.objective})", run.recipe.source,
                                "raise the recipe's minutes (or --max-minutes) or shorten the earlier stages")
            started = time.perf_counter() - _trained_before(stage_dir)  # a resumed stage's earlier part counts
            pretrain(PretrainSpec(objective=stage.objective, out=stage_dir, data=corpora[stage.corpus],
                                  model=run.recipe.model,
                                  objective_options=dict(stage.objective_options),
                                  train=_train_config(stage.train, run.seed, left, last), init=init,
                                  resume=latest_checkpoint(stage_dir) is not None, overwrite=True,
                                  progress=run.progress))
            stage_summary = json.loads(summary_path.read_text())
            stage_summary["wall_seconds"] = round(time.perf_counter() - started, 2)
            write_text_atomic(summary_path, json.dumps(stage_summary, indent=2))
        stage_summary = json.loads(summary_path.read_text())
        # the transformer trainer reports a validation loss, word2vec its own epoch loss
        stage_summary.setdefault("final_loss", stage_summary.get("final_val_loss"))
        spent += stage_summary.get("wall_seconds", stage_summary.get("train_seconds", 0.0))
        stages.append({"objective": stage.objective, "corpus": stage.corpus, "run": str(stage_dir.relative_to(run.out)),
                       **{k: stage_summary.get(k) for k in ("wall_seconds", "steps", "tokens", "tokens_per_s",
                                                            "final_loss", "stopped_by")}})
        init = str(stage_dir)
    _publish(Path(init), run.out, run.recipe.name)
    summary = {"recipe": run.recipe.name, "stages": stages, "budget_seconds": budget,
               "train_seconds": round(spent, 2), "tokens": sum(s["tokens"] or 0 for s in stages),
               "steps": stages[-1]["steps"], "tokens_per_s": stages[-1]["tokens_per_s"],
               "final_loss": stages[-1]["final_loss"], "prepare_seconds": prepare_seconds}
    (run.out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _trained_before(stage_dir: Path) -> float:
    """Training seconds an interrupted stage had spent before its last checkpoint (0 if none)."""
    checkpoint = latest_checkpoint(stage_dir)
    if checkpoint is None:
        return 0.0
    return float(json.loads((checkpoint / "state.json").read_text())["trainer"].get("elapsed_s", 0.0))


def _with_saved_settings(run: RecipeRun) -> RecipeRun:
    """On --resume, the budget, seed, --data and --domain-data the run started with, unless given again."""
    saved_path = run.out / SETTINGS_FILE
    saved = json.loads(saved_path.read_text()) if run.resume and saved_path.is_file() else {}
    data = run.data if run.data is not None or run.corpus else saved.get("data")
    domain = run.domain_data if run.domain_data is not None or run.domain_corpus else saved.get("domain_data")
    return dataclasses.replace(
        run, minutes=run.minutes if run.minutes is not None else saved.get("minutes"),
        seed=run.seed if run.seed is not None else saved.get("seed", 0),
        data=Path(data) if data is not None else None, domain_data=Path(domain) if domain is not None else None)


def _check_text(run: RecipeRun) -> None:
    """Each corpus the stages read is given once, prepared or raw (or was prepared by the run
    being resumed), and both read: a typo fails before anything is written."""
    sources = [("data", "--data", "--corpus", run.data, run.corpus)]
    if run.recipe.reads_domain:
        sources.append((DOMAIN_DATA, "--domain-data", "--domain-corpus", run.domain_data, run.domain_corpus))
    for folder, data_flag, corpus_flag, directory, corpus in sources:
        if directory is not None and corpus:
            raise UserError(f"both {data_flag} and {corpus_flag} given", f"{data_flag}/{corpus_flag}",
                            "pass only one of them")
        if directory is not None:
            TokenShards(directory)  # a missing or damaged directory is a one-line error
        elif not (run.resume and (run.out / folder / "manifest.json").is_file()):
            if not corpus:
                raise UserError("no training text", f"{data_flag}/{corpus_flag}",
                                f"pass {corpus_flag} FILE ... or {data_flag} DIR")
            check_corpus(corpus, run.text_field)


def _check_domain_text(run: RecipeRun) -> None:
    """Domain text is given exactly when a stage reads it (a resumed run has it prepared)."""
    given = run.domain_data is not None or bool(run.domain_corpus) or \
        (run.resume and (run.out / DOMAIN_DATA / "manifest.json").is_file())
    if run.recipe.reads_domain and not given:
        first = next(i for i, stage in enumerate(run.recipe.stages) if stage.corpus == "domain")
        raise UserError(f"stage {first} ({run.recipe.stages[first].objective}) of recipe {run.recipe.name} "
                        "trains on a domain corpus", "--domain-corpus",
                        "pass --domain-corpus FILE ... (or --domain-data DIR from `ptmkit prepare`)")
    if given and not run.recipe.reads_domain:
        raise UserError(f"no stage of recipe {run.recipe.name} reads a domain corpus", "--domain-corpus",
                        "drop --domain-corpus/--domain-data, or give a stage `corpus: domain`")


def _train_config(values: dict[str, Any], seed: int, left: float, last: bool) -> TrainConfig:
    """A stage's settings; the last stage trains until the budget is spent, an earlier one for
    its own steps (or epochs), capped by what is left."""
    values = {"seed": seed, **values}
    if last:  # validation only at the end, so the reserve covers all time outside training steps
        values = {"eval_every": UNBOUNDED_STEPS, **values, "steps": UNBOUNDED_STEPS, "max_minutes": left / 60}
    else:
        values["max_minutes"] = min(values.get("max_minutes") or left / 60, left / 60)
    try:
        return TrainConfig(**values)
    except TypeError as err:
        raise UserError(f"bad stage training option: {err}", "recipe stages[].train",
                        "use TrainConfig names (batch_size, seq_len, lr, warmup, precision, ...)") from None


def _data(run: RecipeRun) -> tuple[dict[str, Path], float]:
    """The prepared shards of each corpus the stages read ("general", "domain"): as given, or
    prepared once into OUT/data and OUT/data-domain with one tokenizer (that of a directory given,
    else --tokenizer, else the recipe's trained on all the text)."""
    corpora = {"general": run.data if run.data is not None else _prepared(run.out / "data")}
    if run.recipe.reads_domain:
        corpora["domain"] = run.domain_data if run.domain_data is not None else _prepared(run.out / DOMAIN_DATA)
    missing = [name for name, directory in corpora.items() if directory is None]
    started = time.perf_counter()
    if missing:
        given = [d for d in corpora.values() if d is not None]
        tokenizer = (TokenShards(given[0]).tokenizer() if given else
                     Tokenizer.load(run.tokenizer) if run.tokenizer is not None else
                     train_tokenizer(read_texts(run.corpus + run.domain_corpus, text_field=run.text_field),
                                     show_progress=run.progress, **run.recipe.tokenizer))
        for name in missing:
            corpora[name] = run.out / ("data" if name == "general" else DOMAIN_DATA)
            prepare(run.corpus if name == "general" else run.domain_corpus, tokenizer, corpora[name],
                    text_field=run.text_field, overwrite=True, progress=run.progress)
    if len({json.loads((d / "manifest.json").read_text())["tokenizer_sha256"] for d in corpora.values()}) > 1:
        raise UserError("the general and the domain text were prepared with different tokenizers",
                        str(corpora["domain"]), "prepare both with the same `ptmkit prepare --tokenizer DIR`")
    return corpora, round(time.perf_counter() - started, 2) if missing else 0.0


def _prepared(directory: Path) -> Path | None:
    return directory if (directory / "manifest.json").is_file() else None


def _publish(final: Path, out: Path, name: str) -> None:
    """Copy the last stage's model files to the run's top level, so `--init RUN` finds them."""
    copy_items(final, out, FINAL_FILES)
    config = yaml.safe_load((out / "config.yaml").read_text())
    config["recipe"] = name
    (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def _recipe_dict(recipe: Recipe) -> dict[str, Any]:
    values = dataclasses.asdict(recipe)
    values["stages"] = [dataclasses.asdict(s) for s in recipe.stages]
    values.pop("source")
    return values
