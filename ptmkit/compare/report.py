"""The comparison report: tables and plots from `results.csv` and the pre-training runs.

Reads files only (never trains), so a report can be rebuilt from any finished or partial compare.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import re
import urllib.parse
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ptmkit.compare.config import RECIPE_PREFIX, job_name
from ptmkit.fileio import write_text_atomic
from ptmkit.objectives import OBJECTIVES
from ptmkit.train.feature_rank import collapse_warning

NLG_METRICS = {"rougeL", "rouge1", "rouge2", "bleu", "chrf"}


def read_results(path: Path) -> list[dict[str, Any]]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["value"] = float(row["value"])
        row["seed"] = int(row["seed"])
    return rows


def _budget_sort(budget: str) -> float:
    return float("inf") if budget == "full" else float(budget)


def seed_values(rows: list[dict[str, Any]]) -> dict[tuple, dict[int, float]]:
    """(task, path, objective, budget) -> {seed: value}, NaN values included."""
    groups: dict[tuple, dict[int, float]] = defaultdict(dict)
    for row in rows:
        groups[(row["task"], row["path"], row["objective"], str(row["label_budget"]))][row["seed"]] = row["value"]
    return dict(groups)


def _finite(values: dict[int, float]) -> dict[int, float]:
    return {seed: v for seed, v in values.items() if np.isfinite(v)}


def _mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """(mean, sample std, n); std 0 for one value, NaN mean for none."""
    if not values:
        return float("nan"), float("nan"), 0
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0, len(values)


def aggregate(rows: list[dict[str, Any]]) -> dict[tuple, tuple[float, float, int]]:
    """(task, path, objective, budget) -> (mean, sample std over seeds, number of seeds), over the
    finite values (a NaN score, e.g. from a diverged run, is left out and flagged in the tables)."""
    return {k: _mean_std(list(_finite(v).values())) for k, v in seed_values(rows).items()}


def paired_gain(cell: dict[int, float], base: dict[int, float]) -> tuple[float, bool, int] | None:
    """(gain of `cell` over `base`, beyond the seed spread, seeds compared) on the seeds both have
    a finite score for: fine-tuning seed s draws the same labelled subset for every system, and
    a compare still running has some systems at fewer seeds than scratch, whose extra seeds would
    otherwise shift the difference. Beyond the spread: larger than the larger of the two sample
    stds over those seeds (never with a single common seed: there is no spread to compare with).
    None: no seed in common."""
    cell, base = _finite(cell), _finite(base)
    common = sorted(set(cell) & set(base))
    if not common:
        return None
    a, b = _mean_std([cell[s] for s in common]), _mean_std([base[s] for s in common])
    gain = a[0] - b[0]
    return gain, len(common) > 1 and abs(gain) > max(a[1], b[1]), len(common)


def _fmt(mean: float, std: float, n: int, scale: float) -> str:
    if n == 0:
        return "NaN"
    return f"{mean * scale:.1f} ± {std * scale:.1f}" if n > 1 else f"{mean * scale:.1f}"


def _cell_text(values: dict[int, float], base: dict[int, float] | None, seeds: int) -> str:
    """'mean ± std (gain*)', then what a reader must know: seeds still missing, NaN scores."""
    finite = _finite(values)
    text = _fmt(*_mean_std(list(finite.values())), scale=100)
    gain = paired_gain(values, base) if base is not None else None
    if gain is not None:  # on fewer seeds than the mean (a seed NaN or missing on one side): say so
        fewer = f", {gain[2]} seed{'s' * (gain[2] > 1)}" if gain[2] < len(finite) else ""
        text += f" ({gain[0] * 100:+.1f}{'*' if gain[1] else ''}{fewer})"
    notes = []
    if len(finite) < seeds:
        notes.append(f"{len(finite)}/{seeds} seeds")
    if len(values) > len(finite):
        notes.append(f"{len(values) - len(finite)} NaN")
    return text + (f" [{', '.join(notes)}]" if notes else "")


def task_tables(rows: list[dict[str, Any]], seeds: Sequence[int] = ()
                ) -> dict[str, tuple[list[str], list[list[str]]]]:
    """Per task: header and rows of 'mean ± std (gain over scratch)' for every budget. `seeds`:
    the compare's seeds, so that a seed none of whose cells finished still counts as missing."""
    values = seed_values(rows)
    metric = {row["task"]: row["metric"] for row in rows}
    tables = {}
    for task in sorted({r["task"] for r in rows}):
        budgets = sorted({k[3] for k in values if k[0] == task}, key=_budget_sort)
        systems = sorted({(k[1], k[2]) for k in values if k[0] == task})
        n_seeds = len({r["seed"] for r in rows if r["task"] == task} | set(seeds))
        header = ["path", "objective"] + [f"{metric[task]} @ {b}" for b in budgets]
        body = []
        for path, objective in systems:
            line = [path, objective]
            for b in budgets:
                cell = values.get((task, path, objective, b))
                base = values.get((task, "A", "scratch", b)) if path != "A" else None
                line.append("–" if cell is None else _cell_text(cell, base, n_seeds))
            body.append(line)
        tables[task] = (header, body)
    return tables


def pretrain_summaries(out: Path) -> dict[str, dict[str, Any]]:
    found = {}
    for summary in sorted((out / "pretrain").glob("*/summary.json")):
        found[summary.parent.name] = json.loads(summary.read_text())
    return found


def survey_points(rows: list[dict[str, Any]]) -> dict[str, str]:
    """Per task, the label budget the survey table reads: the task's largest (the same one for
    every objective, also while a compare is still running and some have not reached it)."""
    return {task: max((str(r["label_budget"]) for r in rows if r["task"] == task), key=_budget_sort)
            for task in sorted({r["task"] for r in rows})}


def survey_caption(rows: list[dict[str, Any]]) -> str:
    """What the survey table's score columns are: which task, metric and budget each one reads."""
    metric = {row["task"]: row["metric"] for row in rows}
    points = survey_points(rows)
    kinds = {"NLU": [t for t in points if metric[t] not in NLG_METRICS],
             "NLG": [t for t in points if metric[t] in NLG_METRICS]}
    parts = [f"{kind} score: " + ("; ".join(f"{t} ({metric[t]} ×100) @ {points[t]} labels" for t in tasks)
                                  + (", averaged over these tasks" if len(tasks) > 1 else "")
                                  if tasks else "no such task in results.csv")
             for kind, tasks in kinds.items()]
    return ("Survey: path B (scratch: path A; a recipe whose stages end on domain text: path C), mean over seeds. " + ". ".join(parts) + ". Gain vs scratch: "
            "mean over those tasks of the gain at the same budget, on the seeds both have. "
            "[k/m tasks]: measured on k of the m tasks so far; –: not measured (yet).")


def survey_table(rows: list[dict[str, Any]], out: Path) -> tuple[list[str], list[list[str]]]:
    """The survey's table filled with measured numbers: one row per objective (path B), its NLU
    and NLG scores read at each task's `survey_points` budget (see `survey_caption`)."""
    values = seed_values(rows)
    metric = {row["task"]: row["metric"] for row in rows}
    points = survey_points(rows)
    summaries = pretrain_summaries(out)
    header = ["objective", "family", "backbone", "NLU score", "NLG score", "gain vs scratch",
              "tokens/s", "pre-train tokens", "pre-train s", "pre-train FLOPs", "feature rank/at init"]
    body = []
    for objective in sorted({r["objective"] for r in rows}):
        path = "A" if objective == "scratch" else _survey_path(objective, rows)
        scores: dict[bool, list[float]] = {False: [], True: []}
        tried: dict[bool, int] = {False: 0, True: 0}
        nan_only: dict[bool, int] = {False: 0, True: 0}
        gains = []
        for task, budget in points.items():
            if not any(k[0] == task and k[1] == path and k[2] == objective for k in values):
                continue  # the objective has no cell on this task (its network cannot do it)
            nlg = metric[task] in NLG_METRICS
            tried[nlg] += 1
            measured = values.get((task, path, objective, budget), {})
            cell = _finite(measured)
            if not cell:
                nan_only[nlg] += bool(measured)
                continue
            scores[nlg].append(float(np.mean(list(cell.values()))))
            base = values.get((task, "A", "scratch", budget))
            gain = paired_gain(cell, base) if base is not None and path != "A" else None
            if gain is not None:
                gains.append(gain[0])

        def score(nlg: bool) -> str:
            if not scores[nlg]:  # nothing yet, or only NaN (a diverged run is not "not measured")
                return f"NaN [0/{tried[nlg]} tasks]" if nan_only[nlg] else "–"
            partial = f" [{len(scores[nlg])}/{tried[nlg]} tasks]" if len(scores[nlg]) < tried[nlg] else ""
            return f"{np.mean(scores[nlg]) * 100:.1f}{partial}"

        summary = _run_summary(objective, path, rows, summaries)
        family, backbone = _kind(objective, summary)
        body.append([objective, family, backbone, score(False), score(True),
                     f"{np.mean(gains) * 100:+.1f}" if gains else "–",
                     f"{summary['tokens_per_s']:,.0f}" if summary else "–",
                     f"{summary['tokens']:,}" if summary else "–",
                     f"{summary['train_seconds']:.0f}" if summary else "–",
                     _training_flops(summary), _feature_rank(summary)])
    return header, body


def _survey_path(objective: str, rows: list[dict[str, Any]]) -> str:
    """The path a system's survey row reads: B, or C for a recipe whose stages end on domain text
    (it has no path-B cells)."""
    return "B" if any(r["objective"] == objective and r["path"] == "B" for r in rows) else "C"


def _run_summary(objective: str, path: str, rows: list[dict[str, Any]],
                 summaries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The summary of the pre-training behind `objective`'s cells on `path`: of its runs under
    DIR/pretrain (any pre-training seed), the first whose token count the results name, so a run
    left over from another config is not reported in its place."""
    used = {int(float(r["pretrain_tokens"])) for r in rows if r["objective"] == objective and r["path"] == path}
    domain = path == "C"
    name = re.compile(re.escape(job_name(objective, 0)[:-1]) + r"(\d+)" + ("-domain" if domain else ""))
    for seed in sorted(int(match[1]) for match in map(name.fullmatch, summaries) if match):
        summary = summaries[job_name(objective, seed, domain)]
        if summary.get("tokens") in used:
            return summary
    return {}


def _training_flops(summary: dict[str, Any]) -> str:
    """Model FLOPs of a pre-training (tokens x training FLOPs per token), so budgets given in
    minutes can be compared in compute; word2vec, which is not a network pass, has none."""
    per_token = summary.get("flops_per_token")
    return f"{summary['tokens'] * per_token:.2e}" if per_token else "–"


def _feature_rank(summary: dict[str, Any]) -> str:
    """`rank/rank at init` of the features the run hands to fine-tuning (ptmkit.train.feature_rank),
    with a mark when they collapsed."""
    if summary.get("feature_rank") is None or summary.get("feature_rank_at_init") is None:
        return "–"
    collapsed = " (collapsed)" if collapse_warning(summary) else ""
    return f"{summary['feature_rank']:.0f}/{summary['feature_rank_at_init']:.0f}{collapsed}"


def _kind(objective: str, summary: dict[str, Any]) -> tuple[str, str]:
    """(family, backbone) of a survey row; a recipe is its stages, the last one's family."""
    if objective.startswith(RECIPE_PREFIX):
        stages = summary.get("stages", [])
        last = OBJECTIVES.get(stages[-1]["objective"]) if stages else None
        names = [s["objective"] + (" (domain)" if s.get("corpus") == "domain" else "") for s in stages]
        return (last.family if last else "—"), " → ".join(names) or "recipe"
    cls = OBJECTIVES.get(objective)
    return (cls.family, cls.architecture) if cls else ("—", "random init")


def _markdown_table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in body])


def _html_table(header: list[str], body: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in body)
    return f"<table><tr>{head}</tr>{rows}</table>"


def plots(rows: list[dict[str, Any]], out: Path, runs: Sequence[str] | None = None) -> list[Path]:
    """Score vs label budget per task, pre-training loss curves (of `runs`, default all; a
    directory reused with another config keeps the old runs, which are not this comparison's),
    path A/B/C bars (PNG)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    stats = aggregate(rows)
    for task in sorted({r["task"] for r in rows}):
        fig, ax = plt.subplots(figsize=(6, 4))
        budgets = sorted({k[3] for k in stats if k[0] == task}, key=_budget_sort)
        numeric = [b for b in budgets if b != "full"]
        positions = {b: (float(b) if b != "full" else (max(map(float, numeric)) * 3 if numeric else 1.0))
                     for b in budgets}
        for path, objective in sorted({(k[1], k[2]) for k in stats if k[0] == task}):
            points = [(positions[b], *stats[(task, path, objective, b)][:2]) for b in budgets
                      if stats.get((task, path, objective, b), (0, 0, 0))[2]]  # NaN-only cells: no point
            if not points:
                continue
            x, y, e = zip(*points)
            ax.errorbar(x, np.array(y) * 100, yerr=np.array(e) * 100, marker="o", capsize=3,
                        label=f"{path}: {objective}")
        if len(budgets) > 1:
            ax.set_xscale("log")
        ax.set_xlabel("labelled training examples")
        ax.set_ylabel(next(r["metric"] for r in rows if r["task"] == task))
        ax.set_title(f"{task}: dev score vs label budget")
        ax.legend(fontsize=8)
        written.append(_save(fig, out / f"budget_{task}.png"))
    curves = sorted(path for path in (out / "pretrain").glob("*/metrics.jsonl")
                    if runs is None or path.parent.name in runs)
    if curves:
        fig, ax = plt.subplots(figsize=(6, 4))
        for path in curves:
            points = [(p["tokens"], p["loss"]) for p in _records(path) if "loss" in p and "tokens" in p]
            if points:
                ax.plot(*zip(*points), label=path.parent.name)
        ax.set_xlabel("tokens seen")
        ax.set_ylabel("training loss")
        ax.set_title("pre-training loss")
        ax.legend(fontsize=8)
        written.append(_save(fig, out / "pretrain_loss.png"))
    paths = sorted({r["path"] for r in rows})
    if "C" in paths:
        fig, ax = plt.subplots(figsize=(6, 4))
        labels, means, errs = [], [], []
        for (task, path, objective, budget), (mean, std, n) in sorted(stats.items()):
            if not n:
                continue
            labels.append(f"{task}\n{path}:{objective}\n@{budget}")
            means.append(mean * 100)
            errs.append(std * 100)
        ax.bar(range(len(means)), means, yerr=errs, capsize=3)
        ax.set_xticks(range(len(means)), labels, fontsize=6, rotation=90)
        ax.set_title("paths A (scratch) / B (general) / C (general → domain)")
        written.append(_save(fig, out / "paths.png"))
    return written


def _records(metrics: Path) -> list[dict[str, Any]]:
    """The whole lines of a metrics.jsonl: a run killed mid-write leaves its last one cut off."""
    records = []
    for line in metrics.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt
    plt.close(fig)
    return path


def write_report(out: Path, title: str = "ptmkit compare", notes: Sequence[str] = (),
                 runs: Sequence[str] | None = None, seeds: Sequence[int] = ()) -> tuple[Path, Path]:
    """report.md and a self-contained report.html (plots embedded) from out/results.csv; each
    of `notes` is one paragraph under the introduction. `runs`: the pre-training runs (names
    under out/pretrain) whose loss curves are plotted; None plots every run there. `seeds`: the
    compare's (see `task_tables`)."""
    rows = read_results(out / "results.csv")
    survey = survey_table(rows, out)
    tables = task_tables(rows, seeds)
    images = plots(rows, out, runs)
    intro = ("Scores on dev (×100), mean ± sample std over seeds; in brackets the gain over scratch (path A) "
             "at the same label budget on the seeds both have (', k seeds' when they are fewer than the "
             "mean's), * where it is larger than the seed-to-seed spread (the larger std of the two). "
             "[k/m seeds]: k of the task's m seeds finished so far; "
             "[k NaN]: k seeds scored NaN, left out. Paths: A = scratch, B = general pre-training, "
             "C = general then domain pre-training.")
    notes = [*notes, *failure_notes(out)]
    md = [f"# {title}", "", intro, ""]
    for note in notes:
        md += [note, ""]
    caption = survey_caption(rows)
    md += ["## Objectives side by side", "", caption, "", _markdown_table(*survey), ""]
    for task, table in tables.items():
        md += [f"## {task}", "", _markdown_table(*table), ""]
    md += [f"![{p.stem}]({urllib.parse.quote(p.name)})" for p in images]  # a task name may hold spaces
    write_text_atomic(out / "report.md", "\n".join(md) + "\n")
    body = [f"<h1>{html.escape(title)}</h1>", "<p>" + html.escape(intro) + "</p>",
            *("<p>" + html.escape(note) + "</p>" for note in notes),
            "<h2>Objectives side by side</h2>", "<p>" + html.escape(caption) + "</p>", _html_table(*survey)]
    for task, table in tables.items():
        body += [f"<h2>{html.escape(task)}</h2>", _html_table(*table)]
    for image in images:
        data = base64.b64encode(image.read_bytes()).decode()
        body.append(f'<p><img alt="{html.escape(image.stem)}" src="data:image/png;base64,{data}"></p>')
    style = ("<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
             "table{border-collapse:collapse}td,th{border:1px solid #bbb;padding:.3em .6em}</style>")
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>{style}</head>" \
           f"<body>{''.join(body)}</body></html>"
    write_text_atomic(out / "report.html", page)
    return out / "report.md", out / "report.html"


FAILED_FILE = "failed.json"
"""Written by a compare some of whose runs failed: [{"run": name, "error": text}, ...]."""


def failure_notes(out: Path) -> list[str]:
    """A paragraph naming the runs the last compare could not finish (their cells are missing)."""
    path = out / FAILED_FILE
    if not path.is_file():
        return []
    failed = json.loads(path.read_text())
    return [f"{len(failed)} run(s) failed in the last compare and are missing from the tables: "
            + "; ".join(f"{f['run']} ({f['error']})" for f in failed) + "."] if failed else []


def summary_lines(out: Path) -> str:
    """The survey table and every task's table as plain text, for the terminal."""
    rows = read_results(out / "results.csv")
    blocks = [_text_table(*survey_table(rows, out)) + "\n" + survey_caption(rows)]
    blocks += [f"{task} (×100, mean ± std over seeds; * = gain over scratch beyond the seed spread)\n"
               + _text_table(*table) for task, table in task_tables(rows).items()]
    return "\n\n".join(blocks)


def _text_table(header: list[str], body: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    return "\n".join("  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip() for line in [header, *body])
