"""Checks of configuration values, shared by compare configs and recipes: each names the file and
key of a bad value (`cmp.yaml: finetune.lr`) in a one-line UserError before anything is trained,
and returns the value as the code that uses it needs it."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NoReturn

from ptmkit.data.tokenizer import KINDS
from ptmkit.errors import UserError
from ptmkit.finetuning.tasks import KEEP_EPOCHS, POOLINGS
from ptmkit.train.loop import PRECISIONS

Check = Callable[[Any, str], Any]
"""Validates one config value (its second argument names it: `cmp.yaml: finetune.lr`) and returns
it as the runner needs it; a bad value is a UserError before anything is trained."""

_EXPONENT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")
"""`5e-4`: a number to the user, a string to YAML 1.1 (which wants `5.0e-4`)."""


def positive(value: float) -> bool:
    """A finite number above zero (`value > 0` alone lets inf through)."""
    return math.isfinite(value) and value > 0


def number_or_none(value: Any) -> int | float | None:
    """`value` as a finite number (`5e-4` text as the float it spells), else None. Quoted plain
    numbers stay text: the runner would not convert them either."""
    if isinstance(value, str) and _EXPONENT.fullmatch(value.strip()):
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return value


def whole(least: int) -> Check:
    """An integer (YAML `2`, not `"2"` or `2.0`) of at least `least`."""
    def check(value: Any, spot: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            fail(f"not a whole number >= {least}: {value!r}", spot, f"write an unquoted integer, {least} or more")
        return value
    return check


def number(ok: Callable[[float], bool], rule: str) -> Check:
    """A number for which `ok` holds (`rule` says which in words); `5e-4` text becomes a float."""
    def check(value: Any, spot: str) -> int | float:
        number = number_or_none(value)
        if number is None or not ok(number):
            fail(f"not a number {rule}: {value!r}", spot, f"write an unquoted number {rule}")
        return number  # type: ignore[return-value]
    return check


def searched(check: Check) -> Check:
    """`check`'s value, or a non-empty list of them that each cell searches on its held-out slice."""
    def checked(value: Any, spot: str) -> Any:
        if not isinstance(value, list):
            return check(value, spot)
        if not value:
            fail("an empty list", spot, "give one value, or a list of several to search")
        return [check(item, spot) for item in value]
    return checked


def choice(options: Iterable[str]) -> Check:
    def check(value: Any, spot: str) -> str:
        if not isinstance(value, str) or value not in options:
            fail(f"unknown value {value!r}", spot, f"use one of: {', '.join(options)}")
        return value
    return check


def flag(value: Any, spot: str) -> bool:
    if not isinstance(value, bool):
        fail(f"not true or false: {value!r}", spot, "write true or false")
    return value


def rates(value: Any, spot: str) -> Any:
    """A learning rate or a list of them to search; kept as written (the runner's `as_rates`
    reads quoted numbers too, and a resumed compare must see the same cache key)."""
    for rate in value if isinstance(value, list) and value else [value]:
        try:
            ok = not isinstance(rate, bool) and positive(float(rate))
        except (TypeError, ValueError):
            ok = False
        if not ok:
            fail(f"not a positive learning rate: {rate!r}", spot, "e.g. 5.0e-5, or a list [1.0e-4, 5.0e-4] to search")
    return value


def label(value: Any, spot: str) -> str:
    """A field or label name: text, or a number YAML read as one (`negative_label: 0`)."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        fail(f"not a field or label name: {value!r}", spot, "write a name such as `label`")
    return str(value)


def plain_name(value: Any, spot: str, what: str) -> str:
    """A task's or recipe's name, which becomes a directory under DIR and a file name in the
    report: one plain path part."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        fail(f"{what} {value!r} is not text", spot, "write `name: NAME`")
    name = str(value)
    if not name.strip() or name in (".", "..") or any(c in name for c in "/\\\0") or Path(name).is_absolute():
        fail(f"{what} {name!r} is not a plain name", spot,
             "set `name:` to a name without / or \\ (it becomes a directory and file name), e.g. `name: sst2`")
    return name


def fail(what: str, where: str, fix: str) -> NoReturn:
    raise UserError(what, where, fix)


def check_keys(values: dict, allowed: set[str], where: str) -> None:
    if not isinstance(values, dict):
        fail("must be a mapping", where, "write `key: value` lines")
    unknown = sorted(set(values) - allowed, key=str)
    if unknown:
        fail(f"unknown key(s) {', '.join(map(str, unknown))}", where, f"use only: {', '.join(sorted(allowed))}")


def check_settings(values: Any, checks: dict[str, Check], where: str) -> dict[str, Any]:
    """A mapping of known keys, each value checked (and `5e-4` text made a float)."""
    check_keys(values, set(checks), where)
    return {key: checks[key](value, f"{where}.{key}") for key, value in values.items()}


FINETUNE_VALUES: dict[str, Check] = {
    "epochs": whole(1), "min_steps": whole(0), "lr": rates, "scratch_lr": rates, "batch_size": whole(1),
    "patience": whole(0), "keep_epoch": choice(KEEP_EPOCHS),
    "warmup_ratio": number(lambda v: 0 <= v < 1, "in [0, 1)"), "max_length": whole(1),
    "precision": choice(PRECISIONS), "select_fraction": number(lambda v: 0 <= v < 1, "in [0, 1)"),
    "layer_decay": number(lambda v: 0 < v <= 1, "in (0, 1]"), "pooling": choice(POOLINGS),
    "dropout": number(lambda v: 0 <= v < 1, "in [0, 1)"),
    "weight_decay": number(lambda v: v >= 0, ">= 0"), "freeze_embeddings": flag,
    "head_epochs": searched(whole(0)), "head_lr": number(lambda v: v > 0, "> 0")}
"""FinetuneSpec fields a cell's recipe sets (`scratch_lr`: path A's `lr`); FinetuneSpec itself
checks only some of them, and only once the cell runs."""
TOKENIZER_VALUES: dict[str, Check] = {
    "kind": choice(KINDS), "vocab_size": whole(1),
    "lowercase": lambda value, spot: None if value is None else flag(value, spot),
    "min_frequency": whole(1)}
"""The keyword arguments of `train_tokenizer` (its texts and progress bar aside)."""
