"""`ptmkit pretrain --recipe NAME`: a recipe's stages, one after the other, in one wall-clock budget.

Layout of the run directory::

    data/                    the corpus prepared with the recipe's tokenizer (with --corpus)
    data-domain/             the domain corpus, likewise (with --domain-corpus, for `corpus: domain` stages)
    stages/<i>-<objective>/  one ordinary pre-training run per stage, each initialised from the last
    config.yaml model.safetensors tokenizer/   the final stage's model: `--init RUN` reads it as usual
    summary.json             every stage's time and tokens, and their totals
    recipe.yaml              the recipe as it was run
    recipe_run.json          its budget, seed, --data and stage options, kept by --resume

The budget is wall clock for all stages together (model building, evaluation and saving included);
an earlier stage trains its own steps but always leaves each later stage 10% of the budget, and the
last one also its reserve; the last stage trains for whatever the earlier ones left, less that
reserve for its final evaluation and save. Data preparation is not counted: it is shared with
whatever the run is compared with. A finished stage is never repeated, so an interrupted recipe
continues with `--resume`, on the data it started with.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from ptmkit.checks import positive
from ptmkit.data.corpus import read_texts
from ptmkit.data.shards import TokenShards, prepare
from ptmkit.data.tokenizer import Tokenizer, train_tokenizer
from ptmkit.errors import RunStopped, UserError
from ptmkit.fileio import copy_items, read_json_object, write_text_atomic
from ptmkit.pretraining import PretrainSpec, check_corpus, check_run_dir, pretrain
from ptmkit.recipes import Recipe
from ptmkit.train.checkpoint import latest_checkpoint
from ptmkit.train.loop import UNBOUNDED_STEPS, TrainConfig

LATER_SHARE = 0.1
"""Share of the budget a stage always leaves each stage after it, however many steps it asks for."""
RESERVE_SECONDS, RESERVE_SHARE = 20.0, 0.15
"""Kept back from the last stage's training time for building the model, its one validation and
its save (the trainer's clock counts training steps only): 20 s, or 15% of a budget under 133 s."""
SETTINGS_FILE = "recipe_run.json"
"""The budget, seed, --data, --domain-data and stage options a recipe run started with, which --resume keeps."""
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
    train: dict[str, Any] = dataclasses.field(default_factory=dict)
    """TrainConfig values for every stage, over the recipe's: how the stages run (precision,
    workers, ...), not what they train. On --resume, those the run started with unless given again."""
    progress: bool = True
    overwrite: bool = False
    resume: bool = False
    """Continue the stages already in `out` (none yet is fine); False needs a new or empty `out`."""


def pretrain_recipe(run: RecipeRun) -> dict[str, Any]:
    """Run (or continue) every stage of the recipe; returns the summary written to OUT/summary.json.

    Every input is checked, and the recipe's tokenizer trained, before --overwrite removes an old
    run; bad input found later, before a stage has trained, removes what this call wrote."""
    if run.minutes is not None and not positive(run.minutes):
        raise UserError(f"the budget must be a positive number of minutes, not {run.minutes!r}", "--max-minutes",
                        "give the minutes all stages may take together, e.g. --max-minutes 30")
    if not run.resume:
        check_run_dir(run.out, resume=False, overwrite=run.overwrite)
    run = _with_saved_settings(run)
    _check_domain_text(run)
    _check_text(run)
    budget = 60.0 * (run.minutes if run.minutes is not None else run.recipe.minutes)
    _stage_clock(run, budget, 0.0, 0)  # a budget too small for the stages fails before any work
    corpora = _given_corpora(run)
    started = time.perf_counter()
    tokenizer = _tokenizer(run, corpora)  # a vocabulary the corpus does not fit fails before --overwrite
    prepare_seconds = time.perf_counter() - started
    if run.overwrite and run.out.is_dir() and not run.resume:
        shutil.rmtree(run.out)
    before = set(run.out.iterdir()) if run.out.is_dir() else None
    run.out.mkdir(parents=True, exist_ok=True)
    spent, stages, init = 0.0, [], None
    try:
        started = time.perf_counter()
        corpora = _prepare(run, corpora, tokenizer)
        prepare_seconds = round(prepare_seconds + time.perf_counter() - started, 2) if tokenizer is not None else 0.0
        _save_settings(run, budget)  # only now: --resume must not pick up a run whose inputs failed
        for i, stage in enumerate(run.recipe.stages):
            stage_dir = run.out / "stages" / f"{i}-{stage.objective}"
            stage_summary = _run_stage(run, i, stage_dir, corpora[stage.corpus], budget, spent, init)
            # the transformer trainer reports a validation loss, word2vec its own epoch loss
            stage_summary.setdefault("final_loss", stage_summary.get("final_val_loss"))
            spent += stage_summary.get("wall_seconds", stage_summary.get("train_seconds", 0.0))
            stages.append({"objective": stage.objective, "corpus": stage.corpus,
                           "run": str(stage_dir.relative_to(run.out)),
                           **{k: stage_summary.get(k) for k in ("wall_seconds", "steps", "tokens", "tokens_per_s",
                                                                "final_loss", "stopped_by")}})
            init = str(stage_dir)
    except UserError as err:
        if not stages and not isinstance(err, RunStopped):  # bad input (a stopped stage keeps its checkpoint)
            _remove_new(run.out, before)
        raise
    _publish(Path(init), run.out, run.recipe.name)
    summary = {"recipe": run.recipe.name, "stages": stages, "budget_seconds": budget,
               "train_seconds": round(spent, 2), "tokens": sum(s["tokens"] or 0 for s in stages),
               "steps": stages[-1]["steps"], "tokens_per_s": stages[-1]["tokens_per_s"],
               "final_loss": stages[-1]["final_loss"], "prepare_seconds": prepare_seconds}
    (run.out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _run_stage(run: RecipeRun, i: int, stage_dir: Path, data: Path, budget: float, spent: float,
               init: str | None) -> dict[str, Any]:
    """Stage `i`'s summary: trained (or continued) within what the budget leaves it, or as it finished before."""
    summary_path = stage_dir / "summary.json"
    fix = f"delete {stage_dir} to train the stage again"
    if summary_path.is_file():
        return read_json_object(summary_path, summary_path.name, fix)
    stage, last = run.recipe.stages[i], i == len(run.recipe.stages) - 1
    left = _stage_clock(run, budget, spent, i)
    started = time.perf_counter() - _trained_before(stage_dir)  # a resumed stage's earlier part counts
    pretrain(PretrainSpec(objective=stage.objective, out=stage_dir, data=data, model=run.recipe.model,
                          objective_options=dict(stage.objective_options),
                          train=_train_config({**stage.train, **run.train}, run.seed, left, last), init=init,
                          resume=latest_checkpoint(stage_dir) is not None, overwrite=True, progress=run.progress))
    stage_summary = read_json_object(summary_path, summary_path.name, fix)
    stage_summary["wall_seconds"] = round(time.perf_counter() - started, 2)
    write_text_atomic(summary_path, json.dumps(stage_summary, indent=2))
    return stage_summary


def _stage_clock(run: RecipeRun, budget: float, spent: float, i: int) -> float:
    """Seconds stage `i` may train after the earlier stages' `spent`: what the budget leaves, less
    the last stage's reserve and a share of the budget for each stage after this one."""
    later = len(run.recipe.stages) - 1 - i
    left = budget - spent - min(RESERVE_SECONDS, RESERVE_SHARE * budget) - later * LATER_SHARE * budget
    if left <= 0:
        stage = run.recipe.stages[i]
        raise UserError(f"the {budget / 60:g}-minute budget leaves stage {i} ({stage.objective}) no time"
                        + (f" after the earlier stages' {spent:.0f} s" if spent else ""), run.recipe.source,
                        "raise the recipe's minutes (or --max-minutes), or give it fewer or shorter stages")
    return left


def _remove_new(out: Path, before: set[Path] | None) -> None:
    """Remove what this call wrote into `out` (all of it if `out` is new), so that a corrected retry
    needs no --overwrite and --resume cannot continue a run whose inputs failed."""
    if before is None:
        shutil.rmtree(out, ignore_errors=True)
        return
    for path in set(out.iterdir()) - before:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _trained_before(stage_dir: Path) -> float:
    """Training seconds an interrupted stage had spent before its last checkpoint (0 if none)."""
    checkpoint = latest_checkpoint(stage_dir)
    if checkpoint is None:
        return 0.0
    return float(json.loads((checkpoint / "state.json").read_text())["trainer"].get("elapsed_s", 0.0))


def _with_saved_settings(run: RecipeRun) -> RecipeRun:
    """On --resume, the budget, seed and stage options the run started with, unless given again,
    and the data it started with: other text is refused (a stage's checkpoint counts windows of its data)."""
    path = run.out / SETTINGS_FILE
    if not (run.resume and path.is_file()):
        return dataclasses.replace(run, seed=run.seed if run.seed is not None else 0)
    saved = read_json_object(path, path.name, "start a new run (--overwrite)")
    changed = {"--data": run.data is not None and str(run.data.resolve()) != saved.get("data"),
               "--domain-data": run.domain_data is not None
               and str(run.domain_data.resolve()) != saved.get("domain_data"),
               "--corpus": bool(run.corpus), "--domain-corpus": bool(run.domain_corpus),
               "--tokenizer": run.tokenizer is not None}
    flag = next((flag for flag, given in changed.items() if given), None)
    if flag is not None:
        raise UserError(f"{flag} with --resume of a recipe run", flag,
                        f"the run resumes on the data it started with; drop {flag}")
    return dataclasses.replace(
        run, minutes=run.minutes if run.minutes is not None else saved.get("minutes"),
        seed=run.seed if run.seed is not None else saved.get("seed", 0),
        train={**saved.get("train", {}), **run.train},
        data=Path(saved["data"]) if saved.get("data") else None,
        domain_data=Path(saved["domain_data"]) if saved.get("domain_data") else None)


def _save_settings(run: RecipeRun, budget: float) -> None:
    """The recipe and the settings --resume keeps."""
    write_text_atomic(run.out / "recipe.yaml", yaml.safe_dump(_recipe_dict(run.recipe), sort_keys=False))
    write_text_atomic(run.out / SETTINGS_FILE, json.dumps(
        {"minutes": budget / 60, "seed": run.seed, "data": str(run.data.resolve()) if run.data else None,
         "domain_data": str(run.domain_data.resolve()) if run.domain_data else None, "train": run.train}, indent=2))


def _resumed_data(run: RecipeRun, folder: str) -> Path | None:
    """OUT/`folder` when the run being resumed prepared its text there."""
    return run.out / folder if run.resume and (run.out / folder / "manifest.json").is_file() else None


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
        elif _resumed_data(run, folder) is None:
            if not corpus:
                raise UserError("no training text", f"{data_flag}/{corpus_flag}",
                                f"pass {corpus_flag} FILE ... or {data_flag} DIR")
            check_corpus(corpus, run.text_field)


def _check_domain_text(run: RecipeRun) -> None:
    """Domain text is given exactly when a stage reads it (a resumed run has it prepared)."""
    given = run.domain_data is not None or bool(run.domain_corpus) or _resumed_data(run, DOMAIN_DATA) is not None
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


def _given_corpora(run: RecipeRun) -> dict[str, Path | None]:
    """The prepared shards of each corpus the stages read ("general", "domain"): as given, or as
    prepared by the run being resumed; None for those still to prepare."""
    corpora = {"general": run.data if run.data is not None else _resumed_data(run, "data")}
    if run.recipe.reads_domain:
        corpora["domain"] = run.domain_data if run.domain_data is not None else _resumed_data(run, DOMAIN_DATA)
    given = [directory for directory in corpora.values() if directory is not None]
    if len({json.loads((d / "manifest.json").read_text())["tokenizer_sha256"] for d in given}) > 1:
        raise UserError("the general and the domain text were prepared with different tokenizers",
                        str(corpora["domain"]), "prepare both with the same `ptmkit prepare --tokenizer DIR`")
    return corpora


def _tokenizer(run: RecipeRun, corpora: dict[str, Path | None]) -> Tokenizer | None:
    """The one tokenizer of the corpora still to prepare (None if none is): that of a directory
    given, else --tokenizer, else the recipe's trained on all the text."""
    if all(directory is not None for directory in corpora.values()):
        return None
    given = [directory for directory in corpora.values() if directory is not None]
    return (TokenShards(given[0]).tokenizer() if given else
            Tokenizer.load(run.tokenizer) if run.tokenizer is not None else
            train_tokenizer(read_texts(run.corpus + run.domain_corpus, text_field=run.text_field),
                            show_progress=run.progress, **run.recipe.tokenizer))


def _prepare(run: RecipeRun, corpora: dict[str, Path | None], tokenizer: Tokenizer | None) -> dict[str, Path]:
    """Every corpus prepared: those still to prepare into OUT/data and OUT/data-domain."""
    prepared = {}
    for name, directory in corpora.items():
        if directory is None:
            directory = run.out / ("data" if name == "general" else DOMAIN_DATA)
            prepare(run.corpus if name == "general" else run.domain_corpus, tokenizer, directory,
                    text_field=run.text_field, overwrite=True, progress=run.progress)
        prepared[name] = directory
    return prepared


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
