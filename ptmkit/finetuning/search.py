"""Learning-rate search: one fine-tuning per rate, the winner picked on held-out training data.

OUT/search/lr-<rate>/ holds each run; the winner's files are copied to OUT, so `evaluate --run
OUT` and `generate` use it like any fine-tuned run, and OUT/eval.json lists every rate's scores.
With a selection slice (`select_fraction` > 0) the dev set plays no part in any choice.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from typing import Any

from ptmkit.errors import UserError
from ptmkit.fileio import copy_items
from ptmkit.finetuning.run import FinetuneSpec, check_finetune_out, finetune

RUN_FILES = ("config.yaml", "model.safetensors", "tokenizer", "metrics.jsonl")


def finetune_search(spec: FinetuneSpec, rates: list[float]) -> dict[str, Any]:
    """Fine-tune at each learning rate; returns the winner's eval.json plus every rate's scores."""
    if not rates or any(r <= 0 for r in rates):
        raise UserError(f"learning rates must be positive, not {rates}", "--lr", "e.g. --lr 1e-4,5e-4")
    if len(rates) == 1:
        return finetune(dataclasses.replace(spec, lr=rates[0]))
    check_finetune_out(spec)
    if spec.overwrite and spec.out.is_dir():
        shutil.rmtree(spec.out)
    tried = []
    for rate in rates:
        run = spec.out / "search" / f"lr-{rate:g}"
        result = finetune(dataclasses.replace(spec, lr=rate, out=run, overwrite=True, resume=False))
        tried.append({"lr": rate, "result": result})
    key = selection_key(tried[0]["result"])
    best = max(tried, key=lambda t: t["result"][key])  # the first of equal scores: lists order ties
    copy_items(spec.out / "search" / f"lr-{best['lr']:g}", spec.out, RUN_FILES)
    result = {**best["result"], "lr": best["lr"], "selected_by": key,
              "search": [{"lr": t["lr"], key: t["result"][key],
                          t["result"]["main_metric"]: t["result"][t["result"]["main_metric"]]} for t in tried]}
    (spec.out / "eval.json").write_text(json.dumps(result, indent=2))
    return result


def as_rates(value: float | str | list) -> list[float]:
    """A learning rate, or a list of them to search (a recipe's or compare config's `lr`)."""
    return [float(r) for r in (value if isinstance(value, list) else [value])]


def selection_key(result: dict[str, Any]) -> str:
    """The score that picks the rate: the held-out training slice's, else (no slice) dev's."""
    main = result["main_metric"]
    return f"select_{main}" if f"select_{main}" in result else main
