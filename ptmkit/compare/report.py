"""The comparison report: tables and plots from `results.csv` and the pre-training runs.

Reads files only (never trains), so a report can be rebuilt from any finished or partial compare.
"""

from __future__ import annotations

import base64
import csv
import html
import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ptmkit.compare.config import RECIPE_PREFIX, job_name
from ptmkit.objectives import OBJECTIVES

NLG_METRICS = {"rougeL", "rouge1", "rouge2", "bleu", "chrf"}


def read_results(path: Path) -> list[dict[str, Any]]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["value"] = float(row["value"])
        row["seed"] = int(row["seed"])
    return rows


def _budget_sort(budget: str) -> float:
    return float("inf") if budget == "full" else float(budget)


def aggregate(rows: list[dict[str, Any]]) -> dict[tuple, tuple[float, float, int]]:
    """(task, path, objective, budget) -> (mean, std over seeds, number of seeds)."""
    groups: dict[tuple, list[float]] = defaultdict(list)
    for row in rows:
        groups[(row["task"], row["path"], row["objective"], str(row["label_budget"]))].append(row["value"])
    return {k: (float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, len(v))
            for k, v in groups.items()}


def _fmt(mean: float, std: float, n: int, scale: float) -> str:
    return f"{mean * scale:.1f} ± {std * scale:.1f}" if n > 1 else f"{mean * scale:.1f}"


def _beyond_spread(cell: tuple[float, float, int], base: tuple[float, float, int]) -> bool:
    """A difference from scratch larger than the seed-to-seed spread (the larger of the two
    standard deviations); with a single seed there is no spread to compare with."""
    return min(cell[2], base[2]) > 1 and abs(cell[0] - base[0]) > max(cell[1], base[1])


def task_tables(rows: list[dict[str, Any]]) -> dict[str, tuple[list[str], list[list[str]]]]:
    """Per task: header and rows of 'mean ± std (gain over scratch)' for every budget."""
    stats = aggregate(rows)
    metric = {row["task"]: row["metric"] for row in rows}
    tables = {}
    for task in sorted({r["task"] for r in rows}):
        budgets = sorted({k[3] for k in stats if k[0] == task}, key=_budget_sort)
        systems = sorted({(k[1], k[2]) for k in stats if k[0] == task})
        header = ["path", "objective"] + [f"{metric[task]} @ {b}" for b in budgets]
        body = []
        for path, objective in systems:
            line = [path, objective]
            for b in budgets:
                cell = stats.get((task, path, objective, b))
                base = stats.get((task, "A", "scratch", b))
                if cell is None:
                    line.append("–")
                    continue
                text = _fmt(*cell, scale=100)
                if base is not None and path != "A":
                    text += f" ({(cell[0] - base[0]) * 100:+.1f}{'*' if _beyond_spread(cell, base) else ''})"
                line.append(text)
            body.append(line)
        tables[task] = (header, body)
    return tables


def pretrain_summaries(out: Path) -> dict[str, dict[str, Any]]:
    found = {}
    for summary in sorted((out / "pretrain").glob("*/summary.json")):
        found[summary.parent.name] = json.loads(summary.read_text())
    return found


def survey_table(rows: list[dict[str, Any]], out: Path) -> tuple[list[str], list[list[str]]]:
    """The survey's table filled with measured numbers: one row per objective (path B)."""
    stats = aggregate(rows)
    summaries = pretrain_summaries(out)
    header = ["objective", "family", "backbone", "NLU score", "NLG score", "gain vs scratch",
              "tokens/s", "pre-train tokens", "pre-train s", "pre-train FLOPs"]
    body = []
    for objective in sorted({r["objective"] for r in rows}):
        nlu, nlg, gains = [], [], []
        for task in {r["task"] for r in rows}:
            metric = next(r["metric"] for r in rows if r["task"] == task)
            path = "A" if objective == "scratch" else "B"
            budgets = sorted({k[3] for k in stats if k[0] == task and k[2] == objective}, key=_budget_sort)
            if not budgets:
                continue
            mean = stats[(task, path, objective, budgets[-1])][0]
            (nlg if metric in NLG_METRICS else nlu).append(mean)
            base = stats.get((task, "A", "scratch", budgets[-1]))
            if base and objective != "scratch":
                gains.append(mean - base[0])
        summary = _general_summary(objective, rows, summaries)
        family, backbone = _kind(objective, summary)
        body.append([objective, family, backbone,
                     f"{np.mean(nlu) * 100:.1f}" if nlu else "–", f"{np.mean(nlg) * 100:.1f}" if nlg else "–",
                     f"{np.mean(gains) * 100:+.1f}" if gains else "–",
                     f"{summary['tokens_per_s']:,.0f}" if summary else "–",
                     f"{summary['tokens']:,}" if summary else "–",
                     f"{summary['train_seconds']:.0f}" if summary else "–",
                     _training_flops(summary)])
    return header, body


def _general_summary(objective: str, rows: list[dict[str, Any]],
                     summaries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The summary of the general pre-training behind `objective`'s path-B cells: of its runs
    under DIR/pretrain (any pre-training seed), the first whose token count the results name,
    so a run left over from another config is not reported in its place."""
    used = {int(float(r["pretrain_tokens"])) for r in rows if r["objective"] == objective and r["path"] == "B"}
    prefix = job_name(objective, 0)[:-1]  # "<objective>-s"
    for seed in sorted(int(name[len(prefix):]) for name in summaries
                       if name.startswith(prefix) and name[len(prefix):].isdigit()):
        summary = summaries[job_name(objective, seed)]
        if summary.get("tokens") in used:
            return summary
    return {}


def _training_flops(summary: dict[str, Any]) -> str:
    """Model FLOPs of a pre-training (tokens x training FLOPs per token), so budgets given in
    minutes can be compared in compute; word2vec, which is not a network pass, has none."""
    per_token = summary.get("flops_per_token")
    return f"{summary['tokens'] * per_token:.2e}" if per_token else "–"


def _kind(objective: str, summary: dict[str, Any]) -> tuple[str, str]:
    """(family, backbone) of a survey row; a recipe is its stages, the last one's family."""
    if objective.startswith(RECIPE_PREFIX):
        stages = [s["objective"] for s in summary.get("stages", [])]
        last = OBJECTIVES.get(stages[-1]) if stages else None
        return (last.family if last else "—"), " → ".join(stages) or "recipe"
    cls = OBJECTIVES.get(objective)
    return (cls.family, cls.architecture) if cls else ("—", "random init")


def _markdown_table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in body])


def _html_table(header: list[str], body: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in body)
    return f"<table><tr>{head}</tr>{rows}</table>"


def plots(rows: list[dict[str, Any]], out: Path) -> list[Path]:
    """Score vs label budget per task, pre-training loss curves, path A/B/C bars (PNG)."""
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
                      if (task, path, objective, b) in stats]
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
    curves = sorted((out / "pretrain").glob("*/metrics.jsonl"))
    if curves:
        fig, ax = plt.subplots(figsize=(6, 4))
        for path in curves:
            points = [json.loads(line) for line in path.read_text().splitlines()]
            points = [(p["tokens"], p["loss"]) for p in points if "loss" in p and "tokens" in p]
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
        for (task, path, objective, budget), (mean, std, _) in sorted(stats.items()):
            labels.append(f"{task}\n{path}:{objective}\n@{budget}")
            means.append(mean * 100)
            errs.append(std * 100)
        ax.bar(range(len(means)), means, yerr=errs, capsize=3)
        ax.set_xticks(range(len(means)), labels, fontsize=6, rotation=90)
        ax.set_title("paths A (scratch) / B (general) / C (general → domain)")
        written.append(_save(fig, out / "paths.png"))
    return written


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt
    plt.close(fig)
    return path


def write_report(out: Path, title: str = "ptmkit compare", notes: Sequence[str] = ()) -> tuple[Path, Path]:
    """report.md and a self-contained report.html (plots embedded) from out/results.csv; each
    of `notes` is one paragraph under the introduction."""
    rows = read_results(out / "results.csv")
    survey = survey_table(rows, out)
    tables = task_tables(rows)
    images = plots(rows, out)
    md = [f"# {title}", "", "Scores on dev (×100), mean ± std over seeds; in brackets the gain over "
          "scratch (path A) at the same label budget, * where it is larger than the seed-to-seed spread "
          "(the larger std of the two). Paths: A = scratch, B = general pre-training, "
          "C = general then domain pre-training.", ""]
    for note in notes:
        md += [note, ""]
    md += ["## Objectives side by side", "", _markdown_table(*survey), ""]
    for task, table in tables.items():
        md += [f"## {task}", "", _markdown_table(*table), ""]
    md += [f"![{p.stem}]({p.name})" for p in images]
    (out / "report.md").write_text("\n".join(md) + "\n")
    body = [f"<h1>{html.escape(title)}</h1>", "<p>" + html.escape(md[2]) + "</p>",
            *("<p>" + html.escape(note) + "</p>" for note in notes),
            "<h2>Objectives side by side</h2>", _html_table(*survey)]
    for task, table in tables.items():
        body += [f"<h2>{html.escape(task)}</h2>", _html_table(*table)]
    for image in images:
        data = base64.b64encode(image.read_bytes()).decode()
        body.append(f'<p><img alt="{image.stem}" src="data:image/png;base64,{data}"></p>')
    style = ("<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
             "table{border-collapse:collapse}td,th{border:1px solid #bbb;padding:.3em .6em}</style>")
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>{style}</head>" \
           f"<body>{''.join(body)}</body></html>"
    (out / "report.html").write_text(page)
    return out / "report.md", out / "report.html"


def summary_lines(out: Path) -> str:
    """The survey table and every task's table as plain text, for the terminal."""
    rows = read_results(out / "results.csv")
    blocks = [_text_table(*survey_table(rows, out))]
    blocks += [f"{task} (×100, mean ± std over seeds; * = gain over scratch beyond the seed spread)\n"
               + _text_table(*table) for task, table in task_tables(rows).items()]
    return "\n\n".join(blocks)


def _text_table(header: list[str], body: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    return "\n".join("  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip() for line in [header, *body])
