"""Learning-rate search: one fine-tuning per rate, the winner picked on held-out training data.

OUT/search/lr-<rate>/ holds each run; the winner's files are copied to OUT, so `evaluate --run
OUT` and `generate` use it like any fine-tuned run, and OUT/eval.json lists every rate's scores.
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

from ptmkit.errors import RunStopped, UserError
from ptmkit.fileio import copy_items
from ptmkit.finetuning.run import FinetuneSpec, check_finetune, check_finetune_out, finetune

RUN_FILES = ("config.yaml", "model.safetensors", "tokenizer", "metrics.jsonl")

SEARCH_SELECT_FRACTION = 0.1
"""The share of the training examples a search holds out to pick the rate (and epoch) when no
select_fraction is given: the README's example and the `budget` recipe's value. Picking the
rate on dev would report the best of several dev scores as if it were one."""


def select_fraction_for(select_fraction: float | None, rates: list[float]) -> float:
    """The held-out share that picks the epoch (and rate) for `rates` when --select-fraction is
    `select_fraction` (None: not set): none for one rate, SEARCH_SELECT_FRACTION for a search."""
    if select_fraction is not None:
        return select_fraction
    return SEARCH_SELECT_FRACTION if len(rates) > 1 else 0.0


def finetune_search(spec: FinetuneSpec, rates: list[float]) -> dict[str, Any]:
    """Fine-tune at each learning rate; returns the winner's eval.json plus every rate's scores."""
    if not rates or any(r <= 0 for r in rates):
        raise UserError(f"learning rates must be positive, not {rates}", "--lr", "e.g. --lr 1e-4,5e-4")
    if len(rates) == 1:
        return finetune(dataclasses.replace(spec, lr=rates[0]))
    explicit = spec.select_fraction is not None
    spec = dataclasses.replace(spec, select_fraction=select_fraction_for(spec.select_fraction, rates))
    if explicit and spec.select_fraction == 0:
        warnings.warn(f"select_fraction 0: the dev set picks among {len(rates)} learning rates, so the "
                      "reported dev score is the best of several and optimistic", stacklevel=2)
    check_finetune_out(spec)
    if spec.overwrite and spec.out.is_dir() and any(spec.out.iterdir()):
        # replace the earlier run only once this one's input is known to be good (a typo in
        # --train must not cost it): the same checks a single fine-tuning makes before writing
        check_finetune(dataclasses.replace(spec, lr=rates[0]))
        shutil.rmtree(spec.out)
    tried: list[dict[str, Any]] = []
    for rate in rates:
        run = spec.out / "search" / f"lr-{rate:g}"
        try:
            result = finetune(dataclasses.replace(spec, lr=rate, out=run, overwrite=True, resume=False))
        except RunStopped as err:  # e.g. a rate too high diverged: the others may still be good
            warnings.warn(f"--lr {rate:g} left out of the search: {err}", stacklevel=2)
            tried.append({"lr": rate, "stopped": str(err)})
            continue
        tried.append({"lr": rate, "result": result})
    finished = [t for t in tried if "result" in t]
    if not finished:
        raise RunStopped(f"every learning rate stopped, {rates[0]:g}: {tried[0]['stopped']}", str(spec.out),
                         "lower --lr, or check the data")
    key = selection_key(finished[0]["result"])
    best = max(finished, key=lambda t: t["result"][key])  # the first of equal scores: lists order ties
    copy_items(spec.out / "search" / f"lr-{best['lr']:g}", spec.out, RUN_FILES)
    result = {**best["result"], "lr": best["lr"], "selected_by": key,
              "search": [{"lr": t["lr"], key: t["result"][key],
                          t["result"]["main_metric"]: t["result"][t["result"]["main_metric"]]}
                         if "result" in t else t for t in tried]}
    (spec.out / "eval.json").write_text(json.dumps(result, indent=2))
    return result


def as_rates(value: float | str | list) -> list[float]:
    """A learning rate, or a list of them to search (a recipe's or compare config's `lr`)."""
    return [float(r) for r in (value if isinstance(value, list) else [value])]


def selection_key(result: dict[str, Any]) -> str:
    """The score that picks the rate: the held-out training slice's, else (no slice) dev's."""
    main = result["main_metric"]
    return f"select_{main}" if f"select_{main}" in result else main
