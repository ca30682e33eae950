"""Learning-rate search: one fine-tuning per rate, the winner picked on held-out training data.
Given several --head-epochs too (e.g. 0 and 5: plain fine-tuning or the head first), every rate
is tried with each, so that each model gets the protocol that suits it, chosen without dev.

OUT/search/lr-<rate>/ (lr-<rate>-head-<n>/ when head epochs are searched) holds each run; the
winner's files are copied to OUT, so `evaluate --run OUT` and `generate` use it like any
fine-tuned run, and OUT/eval.json lists every run's scores.
With a selection slice (`select_fraction` > 0) the dev set plays no part in any choice; a search
that was given no `select_fraction` holds out SEARCH_SELECT_FRACTION (an explicit 0 lets dev pick,
with a warning that its score is then optimistic).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import warnings
from typing import Any

from ptmkit.checks import positive
from ptmkit.errors import RunStopped, UserError
from ptmkit.fileio import copy_items, write_text_atomic
from ptmkit.finetuning.registry import TASKS
from ptmkit.finetuning.run import FinetuneSpec, check_finetune, check_finetune_out, finetune, warn_headless

RUN_FILES = ("config.yaml", "model.safetensors", "tokenizer", "metrics.jsonl")

SEARCH_SELECT_FRACTION = 0.1
"""The share of the training examples a search holds out to pick the rate (and epoch) when no
select_fraction is given: the README's example and the `budget` recipe's value. Picking the
rate on dev would report the best of several dev scores as if it were one."""


def select_fraction_for(select_fraction: float | None, choices: int) -> float:
    """The held-out share that picks the epoch (and rate) among `choices` fine-tunings when
    --select-fraction is `select_fraction` (None: not set): none for one, SEARCH_SELECT_FRACTION
    for a search."""
    if select_fraction is not None:
        return select_fraction
    return SEARCH_SELECT_FRACTION if choices > 1 else 0.0


def finetune_search(spec: FinetuneSpec, rates: list[float], head_epochs: list[int] | None = None) -> dict[str, Any]:
    """Fine-tune at each learning rate, with each of `head_epochs` when given (else the spec's);
    returns the winner's eval.json plus every run's scores."""
    if not rates or not all(positive(r) for r in rates):
        raise UserError(f"learning rates must be positive, not {rates}", "--lr", "e.g. --lr 1e-4,5e-4")
    heads = head_epochs or [spec.head_epochs]
    if any(h < 0 for h in heads):
        raise UserError(f"head epochs must be 0 or more, not {heads}", "--head-epochs", "e.g. --head-epochs 0,5")
    if len(heads) > 1 and spec.task in TASKS and not TASKS[spec.task].has_head:  # each would train the same
        warn_headless(spec.task, heads)
        heads = [0]
    trials = [{"lr": rate, **({"head_epochs": h} if len(heads) > 1 else {})} for h in heads for rate in rates]
    if spec.resume and len(trials) > 1:
        raise UserError("--resume continues one fine-tuning, not a search", "--lr/--head-epochs",
                        "resume with the single rate (and head epochs) the run was started with")
    spec = dataclasses.replace(spec, head_epochs=heads[0])
    if len(trials) == 1:
        if spec.keep_epoch == "last" and spec.select_fraction:
            warnings.warn(f"--select-fraction {spec.select_fraction} holds out labels that choose nothing: "
                          "--keep-epoch last keeps the final model of the one rate; drop it to train on them",
                          stacklevel=2)
        return finetune(dataclasses.replace(spec, lr=rates[0]))
    explicit = spec.select_fraction is not None
    spec = dataclasses.replace(spec, select_fraction=select_fraction_for(spec.select_fraction, len(trials)))
    if explicit and spec.select_fraction == 0:
        warnings.warn(f"select_fraction 0: the dev set picks among {len(trials)} fine-tunings, so the "
                      "reported dev score is the best of several and optimistic", stacklevel=2)
    check_finetune_out(spec)
    if spec.overwrite and spec.out.is_dir() and any(spec.out.iterdir()):
        # replace the earlier run only once this one's input is known to be good (a typo in
        # --train must not cost it): the same checks a single fine-tuning makes before writing
        check_finetune(dataclasses.replace(spec, lr=rates[0]))
        shutil.rmtree(spec.out)
    tried: list[dict[str, Any]] = []
    for trial in trials:
        run = spec.out / "search" / _run_name(trial)
        try:
            result = finetune(dataclasses.replace(spec, **trial, out=run, overwrite=True, resume=False))
        except RunStopped as err:  # e.g. a rate too high diverged: the others may still be good
            warnings.warn(f"{_flags(trial)} left out of the search: {err}", stacklevel=2)
            tried.append({**trial, "stopped": str(err)})
            continue
        tried.append({**trial, "result": result})
    finished = [t for t in tried if "result" in t]
    if not finished:
        raise RunStopped(f"every learning rate stopped, {_flags(tried[0])}: {tried[0]['stopped']}", str(spec.out),
                         "lower --lr, or check the data")
    key = selection_key(finished[0]["result"])
    best = max(finished, key=lambda t: t["result"][key])  # the first of equal scores: lists order ties
    chosen = {k: v for k, v in best.items() if k != "result"}
    copy_items(spec.out / "search" / _run_name(chosen), spec.out, RUN_FILES)
    result = {**best["result"], **chosen, "selected_by": key,
              "search": [{**{k: v for k, v in t.items() if k != "result"}, key: t["result"][key],
                          t["result"]["main_metric"]: t["result"][t["result"]["main_metric"]]}
                         if "result" in t else t for t in tried]}
    # last and whole: the winner's files are all in place once eval.json is there
    write_text_atomic(spec.out / "eval.json", json.dumps(result, indent=2))
    return result


def _run_name(trial: dict[str, Any]) -> str:
    return f"lr-{trial['lr']:g}" + (f"-head-{trial['head_epochs']}" if "head_epochs" in trial else "")


def _flags(trial: dict[str, Any]) -> str:
    return f"--lr {trial['lr']:g}" + (f" --head-epochs {trial['head_epochs']}" if "head_epochs" in trial else "")


def as_rates(value: float | str | list) -> list[float]:
    """A learning rate, or a list of them to search (a recipe's or compare config's `lr`)."""
    return [float(r) for r in (value if isinstance(value, list) else [value])]


def as_head_epochs(value: int | list[int]) -> list[int]:
    """Head epochs, or a list of them to search (a recipe's or compare config's `head_epochs`)."""
    return list(value) if isinstance(value, list) else [value]


def selection_key(result: dict[str, Any]) -> str:
    """The score that picks the rate: the held-out training slice's, else (no slice) dev's."""
    main = result["main_metric"]
    return f"select_{main}" if f"select_{main}" in result else main
