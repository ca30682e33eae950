"""Objective registry: name -> class. Adding an objective is one module plus one line here."""

from __future__ import annotations

from ptmkit.errors import UserError
from ptmkit.objectives.bart import Bart
from ptmkit.objectives.base import Objective
from ptmkit.objectives.clm import CausalLM
from ptmkit.objectives.contrastive import DocumentContrastive
from ptmkit.objectives.electra import Electra
from ptmkit.objectives.elmo import ELMo
from ptmkit.objectives.mass import Mass
from ptmkit.objectives.mlm import MaskedLM
from ptmkit.objectives.mpnet import MPNet
from ptmkit.objectives.plm import PermutationLM
from ptmkit.objectives.prefixlm import PrefixLM
from ptmkit.objectives.t5 import T5
from ptmkit.objectives.word2vec import Word2Vec
from ptmkit.objectives.wwm import WholeWordMaskedLM

OBJECTIVES: dict[str, type[Objective]] = {cls.name: cls for cls in (CausalLM, MaskedLM, WholeWordMaskedLM, Electra, PrefixLM, PermutationLM, MPNet, Mass, Bart, T5, Word2Vec, ELMo, DocumentContrastive)}


def get_objective(name: str) -> type[Objective]:
    """The objective class registered under `name`; a UserError lists the known names."""
    if name not in OBJECTIVES:
        raise UserError(f"unknown objective {name!r}", "--objective",
                        f"use one of: {', '.join(sorted(OBJECTIVES))}")
    return OBJECTIVES[name]
