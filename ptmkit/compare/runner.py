"""`ptmkit compare`: every (path, objective) x task x label budget x seed cell, cached and resumable.

Layout of the output directory::

    tokenizer/  data/{general,domain}/     shared by every cell
    pretrain/<objective>-s<seed>[-domain]/  one pre-training run each (reused when its key matches)
    finetune/<task>/<path>-<objective>/b<budget>-s<seed>/   one fine-tuning run each
    results.csv  report.md  report.html  *.png

A cell is done when its run holds the files it ends with and the key it was made with
(`<run>.compare_key.json`, beside the run); a second compare over the same config trains nothing,
and an interrupted one continues where it stopped.
"""

from __future__ import annotations

import csv
import hashlib
import json
import multiprocessing
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ptmkit.compare.config import RECIPE_PREFIX, CompareConfig, TaskConfig, finetune_recipe, max_length, recipe_search
from ptmkit.compare.estimate import batch_tokens, budget_steps, estimate, train_tokens
from ptmkit.compare.plan import SCRATCH, Cell, PretrainJob, cells, pretrain_jobs, skipped_pairs
from ptmkit.compare.report import FAILED_FILE, write_report
from ptmkit.data.corpus import file_digests, read_texts
from ptmkit.data.shards import corpus_fingerprint, prepare
from ptmkit.data.tokenizer import Tokenizer, train_tokenizer
from ptmkit.errors import UserError
from ptmkit.fileio import write_text_atomic
from ptmkit.finetuning.run import FinetuneSpec, kept_model
from ptmkit.finetuning.search import as_rates, finetune_search
from ptmkit.finetuning.tasks import answers_one_class
from ptmkit.objectives import get_objective
from ptmkit.pretraining import PretrainSpec, pretrain
from ptmkit.recipes import Recipe
from ptmkit.recipes.pretrain import RecipeRun, pretrain_recipe
from ptmkit.train.host import cpu_cores
from ptmkit.train.loop import TrainConfig

RESULT_COLUMNS = ["objective", "path", "task", "label_budget", "seed", "metric", "value",
                  "pretrain_tokens", "pretrain_seconds", "finetune_seconds"]


def _key(values: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _done(run: Path, marker: str, key: str) -> bool:
    """`run` holds its final file `marker` and was made for `key`."""
    return (run / marker).is_file() and _read_key(run) == key


def _prepared_for(directory: Path, key: str) -> bool:
    return (_read_json(directory / "manifest.json") or {}).get("fingerprint") == key


def _read_json(path: Path) -> Any:
    """A cache file's content, or None when it is missing or damaged (then its work is redone)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _claim(run: Path, key: str) -> None:
    """Make `run` the directory of `key`, keeping what an interrupted run with the same key
    finished (recipe stages, folds) and removing what other inputs made."""
    if _read_key(run) != key:
        shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True, exist_ok=True)
    _stamp(run, key)


def _stamp_path(run: Path) -> Path:
    """Where `run`'s key is kept: beside the run, not in it, because a pre-training started
    afresh empties its directory first (an interrupted one would lose its key and never resume)."""
    return run.with_name(run.name + ".compare_key.json")


def _stamp(run: Path, key: str) -> None:
    write_text_atomic(_stamp_path(run), json.dumps({"key": key}))
    (run / "compare_key.json").unlink(missing_ok=True)  # where earlier versions kept it


def _read_key(run: Path) -> str | None:
    for stamp in (_stamp_path(run), run / "compare_key.json"):
        if stamp.is_file():
            saved = _read_json(stamp)
            return saved.get("key") if isinstance(saved, dict) else None
    return None


class Compare:
    """Runs the cells of one config into one output directory."""

    def __init__(self, cfg: CompareConfig, out: Path, progress: bool = True, workers: int = 1) -> None:
        """`workers` > 1: fine-tune that many cells at once, each in a process of its own with
        an equal share of the CPU's cores (pre-training stays one run at a time, so that no run's
        budget or wall time depends on another's)."""
        if workers < 1:
            raise UserError(f"--workers {workers} runs nothing", "--workers", "use 1 or more processes")
        self.cfg, self.out, self.progress, self.workers = cfg, out, progress, workers

    # ---- shared inputs ------------------------------------------------------------------
    def _tokenizer_key(self) -> str:
        return _key({"settings": self.cfg.tokenizer, "text_field": self.cfg.text_field,
                     "corpus": _content(self.cfg.corpus + self.cfg.domain_corpus)})

    def _trained_tokenizer(self, key: str) -> Tokenizer | None:
        """The tokenizer already in `out`, if it was made for `key`."""
        directory = self.out / "tokenizer"
        if (directory / "tokenizer.json").is_file() and _read_key(directory) in (key, None):
            return Tokenizer.load(directory)  # no key: trained by a version that kept none; taken as is
        return None

    def tokenizer(self) -> Tokenizer:
        if isinstance(self.cfg.tokenizer, str):
            return Tokenizer.load(self.cfg.tokenizer)
        directory = self.out / "tokenizer"
        key = self._tokenizer_key()
        tokenizer = self._trained_tokenizer(key)
        if tokenizer is None:
            if (directory / "tokenizer.json").is_file():
                tqdm.write(f"compare: {directory} was trained from other settings or text; training it again",
                           file=sys.stderr)
            tokenizer = train_tokenizer(read_texts(self.cfg.corpus + self.cfg.domain_corpus,
                                                   text_field=self.cfg.text_field),
                                        show_progress=self.progress, **self.cfg.tokenizer)
            tokenizer.save(directory)
        _stamp(directory, key)
        return tokenizer

    def _data_directory(self, tokenizer: Tokenizer, domain: bool) -> tuple[Path, str, dict[str, str]]:
        """Where the general or domain corpus is prepared, the key it must have, and the options."""
        options = {"text_field": self.cfg.text_field}
        if self.cfg.segment:  # only when set: unsegmented data keeps the key it always had
            options["segment"] = self.cfg.segment
        key = corpus_fingerprint(self.cfg.domain_corpus if domain else self.cfg.corpus, tokenizer, **options)
        return self.out / "data" / ("domain" if domain else "general"), key, options

    def data(self, tokenizer: Tokenizer, domain: bool) -> Path:
        directory, key, options = self._data_directory(tokenizer, domain)
        if not _prepared_for(directory, key):
            prepare(self.cfg.domain_corpus if domain else self.cfg.corpus, tokenizer, directory, overwrite=True,
                    progress=self.progress, fingerprint=key, **options)
        return directory

    def finished_runs(self) -> set[str]:
        """The runs ("pretrain NAME", "finetune CELL") a compare would now reuse, found with the
        same keys it uses but without training or preparing anything (for --dry-run)."""
        if isinstance(self.cfg.tokenizer, str):
            tokenizer: Tokenizer | None = Tokenizer.load(self.cfg.tokenizer)
        else:
            tokenizer = self._trained_tokenizer(self._tokenizer_key())
        if tokenizer is None:
            return set()
        data = {}
        for domain in ([False, True] if self.cfg.domain_corpus else [False]):
            directory, key, _ = self._data_directory(tokenizer, domain)
            if _prepared_for(directory, key):
                data[domain] = directory
        jobs = {job for job in pretrain_jobs(self.cfg)
                if False in data and job.domain in data and self.pretrain_done(job, data)}
        finished = {f"pretrain {job.name}" for job in jobs}
        return finished | {f"finetune {cell.name}" for cell in cells(self.cfg)
                           if (cell.job is None or cell.job in jobs) and self.cached_cell(cell, tokenizer) is not None}

    # ---- pre-training -------------------------------------------------------------------
    def train_config(self, budget: dict[str, Any], seed: int, step_tokens: int | None = None) -> TrainConfig:
        """The same budget for every objective: steps, minutes of wall clock, or tokens (read
        `step_tokens` per step; by default one batch)."""
        values = {k: v for k, v in budget.items() if k not in ("steps", "minutes", "tokens")}
        if "minutes" in budget:
            return TrainConfig(seed=seed, max_minutes=float(budget["minutes"]), **values)
        return TrainConfig(seed=seed, steps=budget_steps(budget, step_tokens or batch_tokens(budget)), **values)

    def _pretrain_key(self, job: PretrainJob, data: dict[bool, Path]) -> str:
        """The key of `job`'s run: its settings, the prepared data and (domain runs) the key of
        the general run it starts from."""
        budget = self.cfg.domain_pretrain if job.domain else self.cfg.pretrain
        init = self.out / "pretrain" / job.continues.name if job.continues else None
        if job.objective.startswith(RECIPE_PREFIX):  # its own stages, budget and model, on each corpus it reads
            assert self.cfg.recipe is not None
            read = [False, True] if self.cfg.recipe.reads_domain else [False]
            return _key({"job": asdict(job), "recipe": _pretraining_part(self.cfg.recipe),
                         "data": [_fingerprint(data[domain]) for domain in read]})
        revision = get_objective(job.objective).revision
        # a revision of 0 adds nothing, so the keys of runs made before revisions existed still hold
        return _key({**({"revision": revision} if revision else {}),
                     "job": asdict(job), "budget": budget, "model": self._model_key(),
                     "options": self.cfg.objective_options.get(job.objective, {}),
                     "data": _fingerprint(data[job.domain]),
                     "init": _read_key(init) if init else None, "recipe": None})

    def pretrain_done(self, job: PretrainJob, data: dict[bool, Path]) -> bool:
        """`job` finished with the inputs it has now (a domain run: so did its general run)."""
        if job.continues is not None and not self.pretrain_done(job.continues, data):
            return False
        return _done(self.out / "pretrain" / job.name, "summary.json", self._pretrain_key(job, data))

    def run_pretrain(self, job: PretrainJob, data: dict[bool, Path]) -> Path:
        run = self.out / "pretrain" / job.name
        budget = self.cfg.domain_pretrain if job.domain else self.cfg.pretrain
        init = self.out / "pretrain" / job.continues.name if job.continues else None
        is_recipe = job.objective.startswith(RECIPE_PREFIX)
        key = self._pretrain_key(job, data)
        if _done(run, "summary.json", key):
            return run
        if is_recipe:
            return self._run_recipe(job, run, key, data)
        resume = (run / "config.yaml").is_file() and _read_key(run) == key
        if run.exists() and not resume:
            tqdm.write(f"compare: {run} was made from other settings, data or tokenizer; training it again",
                       file=sys.stderr)
            shutil.rmtree(run)
        run.mkdir(parents=True, exist_ok=True)
        _stamp(run, key)
        # killed before its first checkpoint: nothing to continue, start it again
        resume = resume and (run / "checkpoint").exists()
        spec = PretrainSpec(objective=job.objective, out=run, data=data[job.domain], model=self.cfg.model,
                            objective_options=dict(self.cfg.objective_options.get(job.objective, {})),
                            train=self.train_config(budget, job.seed, self._step_tokens(job, budget, data)),
                            init=str(init) if init else None,
                            resume=resume, overwrite=not resume,
                            progress=False)
        pretrain(spec)
        _stamp(run, key)
        return run

    def _step_tokens(self, job: PretrainJob, budget: dict[str, Any], data: dict[bool, Path]) -> int:
        """Tokens one step of `job` reads (word2vec: an epoch over its prepared data)."""
        return get_objective(job.objective).step_tokens(batch_tokens(budget), train_tokens(data[job.domain]))

    def _run_recipe(self, job: PretrainJob, run: Path, key: str, data: dict[bool, Path]) -> Path:
        """The recipe's stages on the shared data (an interrupted one continues with its finished
        stages); its summary's train_seconds is their wall clock."""
        assert self.cfg.recipe is not None
        _claim(run, key)
        pretrain_recipe(RecipeRun(recipe=self.cfg.recipe, out=run, data=data[False], seed=job.seed, progress=False,
                                  domain_data=data[True] if self.cfg.recipe.reads_domain else None,
                                  resume=True))
        return run

    # ---- fine-tuning --------------------------------------------------------------------
    def fine_tuning_note(self) -> str:
        """How every cell was fine-tuned and which model it scored: a best-of-N dev score reads
        higher than the model is, so the report says when that is what it shows."""
        recipe = finetune_recipe(self.cfg, scratch=False)
        rates, heads, select = recipe_search(recipe)
        steps = f" (at least {recipe['min_steps']} steps)" if recipe.get("min_steps") else ""
        lr = f"lr {rates[0]:g}" if len(rates) == 1 else f"lr picked among {', '.join(f'{r:g}' for r in rates)}"
        scratch = ", scratch lr " + ", ".join(f"{r:g}" for r in as_rates(recipe["scratch_lr"])) \
            if "scratch_lr" in recipe else ""
        one_epoch = recipe["epochs"] == 1 and not recipe.get("min_steps")
        keep = "last" if one_epoch else recipe.get("keep_epoch", "best")
        scored = kept_model(keep, select)
        if keep == "last":
            scored += ", nothing chosen on the data it is scored on"
        elif not select:
            scored += (f", so each score is the best of {recipe['epochs']} and reads high on a small dev set "
                       "(finetune.keep_epoch: last or select_fraction avoid it)")
        epochs = f"{recipe['epochs']} epoch" + ("s" if recipe["epochs"] != 1 else "")
        if heads != [0]:
            picked = " (picked with the rate)" if len(heads) > 1 else ""
            epochs = (f"the head alone for {' or '.join(map(str, heads))} epochs at lr "
                      f"{recipe.get('head_lr', FinetuneSpec.head_lr):g}{picked}, then the whole model {epochs}")
        return (f"Fine-tuning: {epochs}{steps}, {lr}{scratch}, batch {recipe['batch_size']}; "
                f"each cell scores {scored}.")

    def _cell_key(self, cell: Cell, tokenizer: Tokenizer) -> str:
        # a pre-trained init's key covers its tokenizer; scratch's is the tokenizer itself
        init = None if cell.job is None else self.out / "pretrain" / cell.job.name
        recipe = finetune_recipe(self.cfg, cell.job is None)
        return _key({"cell": cell.name, "task": _task_key(cell.task, max_length(cell.task, recipe)), "recipe": recipe,
                     "model": self._model_key(),
                     "init": _read_key(init) if init is not None else {"scratch": tokenizer.sha256()}})

    def cached_cell(self, cell: Cell, tokenizer: Tokenizer) -> dict[str, Any] | None:
        """The eval.json of a cell finished with its current inputs (call once its pre-training
        is done), or None."""
        run = self.out / "finetune" / cell.name
        if _done(run, "eval.json", self._cell_key(cell, tokenizer)):
            return json.loads((run / "eval.json").read_text())
        return None

    def run_cell(self, cell: Cell, tokenizer: Tokenizer, tokenizer_dir: Path) -> dict[str, Any]:
        run = self.out / "finetune" / cell.name
        init = SCRATCH if cell.job is None else str(self.out / "pretrain" / cell.job.name)
        recipe = finetune_recipe(self.cfg, cell.job is None)
        rates, heads, _ = recipe_search(recipe)
        key = self._cell_key(cell, tokenizer)
        if _done(run, "eval.json", key):
            return json.loads((run / "eval.json").read_text())
        task = cell.task
        spec = FinetuneSpec(task=task.type, init=init, out=run, train=task.train, dev=task.dev,
                            data_dir=task.data_dir, tokenizer=tokenizer_dir if cell.job is None else None,
                            text_fields=task.text_fields, label_field=task.label_field,
                            model=self.cfg.model,
                            max_train_examples=cell.budget, dev_fraction=task.dev_fraction,
                            seed=cell.seed, overwrite=True, progress=False, **task.extra,
                            **{k: v for k, v in recipe.items() if k not in ("scratch_lr", "lr", "head_epochs", "max_length")},
                            max_length=max_length(task, recipe), lr=rates[0], head_epochs=heads[0])
        if task.cv_folds:
            _claim(run, key)
            result = _pooled([_fold_result(replace(spec, cv_folds=task.cv_folds, fold=fold, out=run / f"fold-{fold}"),
                                           rates, heads) for fold in range(task.cv_folds)])
        else:
            started = time.perf_counter()
            result = finetune_search(spec, rates, heads)
            result["finetune_seconds"] = round(time.perf_counter() - started, 2)
        write_text_atomic(run / "eval.json", json.dumps(result, indent=2))
        _stamp(run, key)
        return result

    # ---- everything ---------------------------------------------------------------------
    def run(self) -> Path:
        """Every pre-training and cell, finished ones read from the cache first (so results.csv
        holds every finished cell from the start, and the progress bar and its ETA count only the
        work left, weighted by each run's estimated time); then the report. Returns report.html.
        A run that fails is reported and the others go on; if any failed, results.csv,
        failed.json and the report are written and a CompareFailed names them."""
        self.out.mkdir(parents=True, exist_ok=True)
        jobs, todo = pretrain_jobs(self.cfg), cells(self.cfg)
        tokenizer = self.tokenizer()
        tokenizer_dir = Path(self.cfg.tokenizer) if isinstance(self.cfg.tokenizer, str) else self.out / "tokenizer"
        data = {False: self.data(tokenizer, False)}
        if self.cfg.domain_corpus:
            data[True] = self.data(tokenizer, True)
        done_jobs = {job for job in jobs if self.pretrain_done(job, data)}
        results: dict[int, dict[str, Any]] = {}
        for i, cell in enumerate(todo):
            if cell.job is None or cell.job in done_jobs:
                cached = self.cached_cell(cell, tokenizer)
                if cached is not None:
                    results[i] = self._row(cell, cached)
        self.write_results([results[i] for i in sorted(results)])
        weights = _weights(self.cfg, self.out)
        pending_jobs = [job for job in sorted(jobs, key=lambda j: j.domain) if job not in done_jobs]
        pending = [i for i in range(len(todo)) if i not in results]
        work = [weights.get(f"pretrain {job.name}", 1.0) for job in pending_jobs] + \
               [weights.get(f"finetune {todo[i].name}", 1.0) for i in pending]
        bar = tqdm(total=sum(work), desc="compare", disable=not self.progress, smoothing=0,
                   bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}{postfix}]")
        runs_left = len(work)

        def advance(what: str, seconds: float) -> None:
            nonlocal runs_left
            runs_left -= 1
            bar.update(seconds)
            bar.set_postfix_str(f"{runs_left} runs left; last: {what}")

        failures: list[dict[str, Any]] = []
        failed_jobs: set[PretrainJob] = set()
        for job in pending_jobs:  # domain runs start from the general ones
            bar.set_postfix_str(f"{runs_left} runs left; pretrain {job.name}")
            general = job.continues
            if general is not None and general in failed_jobs:
                failed_jobs.add(job)
                failures.append({"run": f"pretrain {job.name}", "error": f"pre-training {general.name} failed"})
            else:
                try:
                    self.run_pretrain(job, data)
                except Exception as err:  # noqa: BLE001 - one failed run must not end the others
                    failed_jobs.add(job)
                    failures.append(_failure(f"pretrain {job.name}", err))
            advance(f"pretrain {job.name}", weights.get(f"pretrain {job.name}", 1.0))
        runnable = []
        for i in pending:
            cell = todo[i]
            if cell.job is not None and cell.job in failed_jobs:
                failures.append({"run": f"finetune {cell.name}", "error": f"pre-training {cell.job.name} failed"})
                advance(f"finetune {cell.name}", weights.get(f"finetune {cell.name}", 1.0))
            else:
                runnable.append(i)

        def starting(cell: Cell) -> None:
            bar.set_postfix_str(f"{runs_left} runs left; finetune {cell.name}")

        for i, outcome in self._finetune_cells([(i, todo[i]) for i in runnable], tokenizer, tokenizer_dir, starting):
            cell = todo[i]
            if isinstance(outcome, Exception):
                failures.append(_failure(f"finetune {cell.name}", outcome))
            else:
                results[i] = self._row(cell, outcome)
                self.write_results([results[k] for k in sorted(results)])
            advance(f"finetune {cell.name}", weights.get(f"finetune {cell.name}", 1.0))
        bar.close()
        failed_file = self.out / FAILED_FILE
        if failures:
            failed_file.write_text(json.dumps(failures, indent=2))
        else:
            failed_file.unlink(missing_ok=True)
        page = self.out / "report.html"
        if results:
            skipped = [f"{system} on {task}" for system, task in skipped_pairs(self.cfg)]
            notes = [self.fine_tuning_note()]
            if skipped:
                notes.append(f"Not run, their networks cannot do the task (seq2seq needs a Transformer): "
                             f"{', '.join(skipped)}.")
            one_class = _one_class_note([todo[i] for i in sorted(results)], self.out)
            if one_class:
                notes.append(one_class)
                tqdm.write(f"compare: {one_class}", file=sys.stderr)
            _, page = write_report(self.out, title=self.cfg.title, notes=notes, runs=[job.name for job in jobs],
                                   seeds=self.cfg.seeds)
        else:  # an earlier run's report would describe results this results.csv no longer holds
            for name in ("report.md", "report.html"):
                (self.out / name).unlink(missing_ok=True)
        if failures:
            raise CompareFailed(failures, len(results), len(todo), self.out)
        return page

    def _finetune_cells(self, cells: list[tuple[int, Cell]], tokenizer: Tokenizer, tokenizer_dir: Path,
                        starting: Callable[[Cell], None]) -> Iterator[tuple[int, dict[str, Any] | Exception]]:
        """(index, eval result or the exception that ended it) of every cell, as each finishes."""
        if self.workers == 1 or len(cells) < 2:
            for i, cell in cells:
                starting(cell)
                try:
                    outcome: dict[str, Any] | Exception = self.run_cell(cell, tokenizer, tokenizer_dir)
                except Exception as err:  # noqa: BLE001 - one failed run must not end the others
                    outcome = err
                yield i, outcome
            return
        # spawned, not forked: a fork of a process whose torch thread pools have run can hang
        threads = max(1, cpu_cores() // self.workers)
        with ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=torch.set_num_threads, initargs=(threads,)) as pool:
            futures = {pool.submit(self.run_cell, cell, tokenizer, tokenizer_dir): i for i, cell in cells}
            try:
                for future in as_completed(futures):
                    try:
                        outcome = future.result()
                    except Exception as err:  # noqa: BLE001
                        outcome = err
                    yield futures[future], outcome
            finally:  # interrupted: start no further cell (those running stop with the workers)
                pool.shutdown(wait=False, cancel_futures=True)

    def _model_key(self) -> Any:
        """The model setting: a size name, or a model YAML file by its content, not its path."""
        model = self.cfg.model
        return {"file": _content([model])} if isinstance(model, str) and Path(model).is_file() else model

    def _row(self, cell: Cell, result: dict[str, Any]) -> dict[str, Any]:
        summary = {}
        if cell.job is not None:
            summary = json.loads((self.out / "pretrain" / cell.job.name / "summary.json").read_text())
            if cell.job.continues is not None:  # path C paid for both stages
                general = json.loads((self.out / "pretrain" / cell.job.continues.name / "summary.json").read_text())
                summary = {k: summary.get(k, 0) + general.get(k, 0) for k in ("tokens", "train_seconds")}
        metric = result["main_metric"]
        return {"objective": cell.objective, "path": cell.path, "task": cell.task.name,
                "label_budget": "full" if cell.budget is None else cell.budget, "seed": cell.seed,
                "metric": metric, "value": result[metric], "pretrain_tokens": summary.get("tokens", 0),
                "pretrain_seconds": summary.get("train_seconds", 0.0),
                "finetune_seconds": result.get("finetune_seconds", 0.0)}

    def write_results(self, rows: list[dict[str, Any]]) -> None:
        """results.csv, replaced atomically through a temporary file of this process's own (two
        processes writing the same temporary file would interleave and then fail to rename it)."""
        fd, name = tempfile.mkstemp(prefix=".results.", suffix=".csv.tmp", dir=self.out)
        tmp = Path(name)
        with open(fd, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=RESULT_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        tmp.replace(self.out / "results.csv")


class CompareFailed(UserError):
    """Some runs of a compare failed; the others finished and are in results.csv and the report.
    Exit code 1 (the error contract's "unexpected failure") when a run failed on something other
    than a UserError: a bug, whose traceback was printed when it happened."""

    def __init__(self, failures: list[dict[str, Any]], finished: int, total: int, out: Path) -> None:
        self.failures = failures
        self.exit_code = 1 if any(f.get("unexpected") for f in failures) else 2
        names = "; ".join(f"{f['run']}: {f['error']}" for f in failures[:5])
        more = f" (and {len(failures) - 5} more)" if len(failures) > 5 else ""
        super().__init__(f"{len(failures)} run(s) failed: {names}{more}",
                         str(out / "failed.json"),
                         f"results.csv and the report hold the {finished} of {total} cells that finished; "
                         "fix the cause and run the compare again (finished runs are reused)")


def _one_class_note(finished: list[Cell], out: Path) -> str | None:
    """The report's warning about finished cells whose model answers one class for every dev
    example (a classification score that is only that class's share); None if there are none."""
    names = [cell.name for cell in finished
             if answers_one_class(json.loads((out / "finetune" / cell.name / "eval.json").read_text()))]
    if not names:
        return None
    listed = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
    return (f"{len(names)} of {len(finished)} cells answer one class for every dev example, so their models "
            f"learned nothing from the labels and their scores are that class's share: {listed}. Give "
            f"fine-tuning more steps or a higher rate (finetune.min_steps, finetune.epochs, finetune.lr).")


def _failure(what: str, err: Exception) -> dict[str, Any]:
    """Report a failed run now (with its traceback, a worker's included) and keep a line for the end."""
    detail = str(err) if isinstance(err, UserError) else "".join(traceback.format_exception(err))  # a bug keeps its traceback
    tqdm.write(f"compare: {what} failed: {detail}", file=sys.stderr)
    return {"run": what, "error": f"{type(err).__name__}: {err}", "unexpected": not isinstance(err, UserError)}


def _weights(cfg: CompareConfig, out: Path) -> dict[str, float]:
    """Estimated seconds of every run (see `estimate`), weighting the progress bar; equal
    weights if the estimate cannot be made."""
    try:
        return {what: max(seconds, 1e-3) for what, seconds in estimate(cfg, out)}
    except Exception:  # noqa: BLE001 - only the bar's ETA depends on it
        return {}


def _fingerprint(data: Path) -> str:
    """The prepared corpus's content and tokenizer, as `ptmkit prepare` recorded them."""
    return json.loads((data / "manifest.json").read_text())["fingerprint"]


def _pretraining_part(recipe: Recipe | None) -> dict[str, Any]:
    """What a recipe's pre-training depends on (its fine-tuning settings do not invalidate it)."""
    assert recipe is not None
    return {k: v for k, v in asdict(recipe).items() if k not in ("finetune", "summary", "source")}


def _task_key(task: TaskConfig, length: int) -> dict[str, Any]:
    """The task's settings and the content of its files, not how their paths are spelled (a
    config given by a relative or an absolute path, or data moved elsewhere, keeps its cells; a
    seq2seq pair is two files). A GLUE `data_dir` is keyed by its resolved path."""
    settings = {**{k: v for k, v in asdict(task).items() if k not in ("train", "dev", "data_dir")}, "max_length": length}
    content = {split: _content(spec.split(",")) for split, spec in (("train", task.train), ("dev", task.dev)) if spec}
    data_dir = str(Path(task.data_dir).resolve()) if task.data_dir else None
    return {**settings, "content": content, "data_dir": data_dir}


def _content(paths: list[str]) -> str:
    h = hashlib.sha256()
    for digest in file_digests(paths):
        h.update(digest)
    return h.hexdigest()


def _fold_result(spec: FinetuneSpec, rates: list[float], heads: list[int]) -> dict[str, Any]:
    """One fold's eval.json, fine-tuning it unless an earlier (interrupted) run finished it; each
    fold keeps its own wall time, so a resumed cell still reports the time all folds took."""
    done = spec.out / "eval.json"
    if done.is_file():  # without its seconds: killed between the fine-tuning's write and this one's
        result = json.loads(done.read_text())
        if "finetune_seconds" in result:
            return result
    started = time.perf_counter()
    result = {**finetune_search(spec, rates, heads), "finetune_seconds": round(time.perf_counter() - started, 2)}
    done.write_text(json.dumps(result, indent=2))
    return result


def _pooled(folds: list[dict[str, Any]]) -> dict[str, Any]:
    """One cell's result from its folds: every score averaged with the fold's dev size as weight
    (for accuracy, the share of all examples scored right), the folds' own scores kept."""
    sizes = [fold["dev_examples"] for fold in folds]
    main = folds[0]["main_metric"]
    scores = {k: sum(fold[k] * n for fold, n in zip(folds, sizes)) / sum(sizes)
              for k, v in folds[0].items()
              if isinstance(v, float) and k != "lr" and all(k in fold for fold in folds)}
    return {**scores, "main_metric": main, "dev_examples": sum(sizes),
            "train_examples": folds[0]["train_examples"],
            "finetune_seconds": round(sum(fold["finetune_seconds"] for fold in folds), 2),
            "folds": [{main: fold[main], "lr": fold.get("lr"),
                       **({"head_epochs": fold["head_epochs"]} if "head_epochs" in fold else {})} for fold in folds]}
