"""Objective registry: name -> class. Adding an objective is one module plus one line here."""

from __future__ import annotations

from ptmkit.errors import UserError
from ptmkit.objectives.base import Objective
from ptmkit.objectives.clm import CausalLM
from ptmkit.objectives.mlm import MaskedLM

OBJECTIVES: dict[str, type[Objective]] = {cls.name: cls for cls in (CausalLM, MaskedLM)}


def get_objective(name: str) -> type[Objective]:
    """The objective class registered under `name`; a UserError lists the known names."""
    if name not in OBJECTIVES:
        raise UserError(f"unknown objective {name!r}", "--objective",
                        f"use one of: {', '.join(sorted(OBJECTIVES))}")
    return OBJECTIVES[name]
