"""What a compare runs: its pre-training jobs and fine-tuning cells, named as in its output
directory (`pretrain/<objective>-s<seed>[-domain]`, `finetune/<task>/<path>-<objective>/b<budget>-s<seed>`)."""

from __future__ import annotations

from dataclasses import dataclass

from ptmkit.compare.config import RECIPE_PREFIX, CompareConfig, TaskConfig, job_name
from ptmkit.finetuning.registry import task_accepts

SCRATCH = "scratch"


@dataclass(frozen=True)
class PretrainJob:
    objective: str
    seed: int
    domain: bool

    @property
    def name(self) -> str:
        return job_name(self.objective, self.seed, self.domain)

    @property
    def continues(self) -> PretrainJob | None:
        """The general-text run a domain run starts from; None for a general run, and for a
        recipe, whose stages go from general to domain text themselves."""
        if not self.domain or self.objective.startswith(RECIPE_PREFIX):
            return None
        return PretrainJob(self.objective, self.seed, False)


@dataclass(frozen=True)
class Cell:
    task: TaskConfig
    path: str
    objective: str
    budget: int | None
    seed: int
    pretrain_seed: int

    @property
    def name(self) -> str:
        budget = "full" if self.budget is None else str(self.budget)
        return f"{self.task.name}/{self.path}-{self.objective}/b{budget}-s{self.seed}"

    @property
    def job(self) -> PretrainJob | None:
        if self.path == "A":
            return None
        return PretrainJob(self.objective, self.pretrain_seed, domain=self.path == "C")


def pretrain_jobs(cfg: CompareConfig) -> list[PretrainJob]:
    jobs = [PretrainJob(o, s, False) for o in cfg.systems for s in cfg.pretrain_seeds]
    return jobs + [PretrainJob(o, s, True) for o in cfg.domain_systems for s in cfg.pretrain_seeds]


def cells(cfg: CompareConfig) -> list[Cell]:
    """Every fine-tuning cell; pre-trained cells use the first pre-training seed unless several
    are given, in which case fine-tuning seed i starts from pre-training seed i (cyclically)."""
    out = []
    for task in cfg.tasks:
        for budget in task.label_budgets or cfg.label_budgets:
            for i, seed in enumerate(cfg.seeds):
                pseed = cfg.pretrain_seeds[i % len(cfg.pretrain_seeds)]
                out.append(Cell(task, "A", SCRATCH, budget, seed, pseed))
                for path in cfg.paths[1:]:
                    out += [Cell(task, path, o, budget, seed, pseed) for o in (cfg.systems if path == "B" else cfg.domain_systems)
                            if can_do(cfg, o, task)]
    return out


def can_do(cfg: CompareConfig, system: str, task: TaskConfig) -> bool:
    """Whether the network a system hands to fine-tuning (a recipe: its last stage's) can do `task`."""
    objective = cfg.recipe.stages[-1].objective if system.startswith(RECIPE_PREFIX) and cfg.recipe else system
    return task_accepts(task.type, objective)


def skipped_pairs(cfg: CompareConfig) -> list[tuple[str, str]]:
    """(system, task) pairs left out because the system's network cannot do the task (an
    LSTM cannot do seq2seq); the report names them."""
    systems = dict.fromkeys(cfg.systems + cfg.domain_systems)
    return [(o, task.name) for task in cfg.tasks for o in systems if not can_do(cfg, o, task)]
