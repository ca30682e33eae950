"""Task registry: name -> class. Adding a task is one module plus one line here."""

from __future__ import annotations

from ptmkit.errors import UserError
from ptmkit.finetuning.keyphrase import Keyphrase
from ptmkit.finetuning.relation import Relation
from ptmkit.finetuning.seq2seq_task import Seq2Seq
from ptmkit.finetuning.tagging import Tag
from ptmkit.finetuning.tasks import Classify, Regress, Task
from ptmkit.objectives import get_objective

TASKS: dict[str, type[Task]] = {cls.name: cls for cls in (Classify, Regress, Tag, Relation, Keyphrase, Seq2Seq)}


def get_task(name: str) -> type[Task]:
    """The task class registered under `name`; a UserError lists the known names."""
    if name not in TASKS:
        raise UserError(f"unknown task {name!r}", "--task", f"use one of: {', '.join(TASKS)} or glue:<name>")
    return TASKS[name]


def task_accepts(task_type: str, objective: str) -> bool:
    """Whether a run pre-trained with `objective` can be fine-tuned on `task_type` (seq2seq needs
    a decoder, or a Transformer encoder to warm-start one; `glue:<name>` tasks are
    classification or regression, which every run can do)."""
    if task_type.startswith("glue:"):
        return True
    return get_task(task_type).accepts(get_objective(objective).architecture)
