"""Every metric of every fine-tuned cell as a Markdown table, one row per system and task, across
one or more compare directories (the groups of experiments/objectives_nlg_gpu.sh, whose scratch
cells each group repeats: they must agree, and are counted once).

    python experiments/cells_table.py runs/e3c/g0 runs/e3c/g1 ...

A cell is DIR/finetune/TASK/SYSTEM/bBUDGET-sSEED/eval.json. Each metric is mean ± sample std
over the seeds present (x100), then, in brackets, the mean gain over scratch on those same seeds
(seed s draws the same labelled subset for every system).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

METRICS = ("rougeL", "bleu", "chrf", "accuracy", "f1", "matthews", "pearson")
SCRATCH = "A-scratch"

Scores = dict[tuple[str, str, str], dict[int, float]]
"""(task, system, metric) -> {seed: value x100}"""


def collect(dirs: list[Path]) -> tuple[Scores, dict[tuple[str, str], list[float]]]:
    scores: Scores = defaultdict(dict)
    seconds: dict[tuple[str, str], list[float]] = defaultdict(list)
    for base in dirs:
        for path in sorted(base.glob("finetune/*/*/b*-s*/eval.json")):
            task, system, cell = path.parts[-4:-1]
            seed = int(cell.rsplit("-s", 1)[1])
            result = json.loads(path.read_text())
            for metric in METRICS:
                if metric not in result:
                    continue
                seen = scores[(task, system, metric)]
                if seed in seen:
                    if abs(seen[seed] - 100 * result[metric]) > 1e-9:
                        raise SystemExit(f"{path}: {metric} {100 * result[metric]:.4f} differs from "
                                         f"{seen[seed]:.4f} of the same cell in another directory")
                    continue
                seen[seed] = 100 * result[metric]
                if metric == result["main_metric"]:
                    seconds[(task, system)].append(result.get("finetune_seconds", 0.0))
    return scores, seconds


def cell_text(values: dict[int, float], scratch: dict[int, float] | None) -> str:
    xs = [values[s] for s in sorted(values)]
    text = f"{statistics.mean(xs):.1f}" + (f" ± {statistics.stdev(xs):.1f}" if len(xs) > 1 else "")
    shared = [s for s in values if scratch and s in scratch]
    if scratch is not None and shared:
        text += f" ({statistics.mean(values[s] - scratch[s] for s in shared):+.1f})"
    return text


def tables(scores: Scores, seconds: dict[tuple[str, str], list[float]]) -> list[str]:
    lines = []
    for task in sorted({t for t, _, _ in scores}):
        metrics = [m for m in METRICS if any(t == task and mm == m for t, _, mm in scores)]
        systems = {s for t, s, _ in scores if t == task}
        main = metrics[0]
        ranked = sorted(systems, key=lambda s: -statistics.mean(scores[(task, s, main)].values()))
        lines += [f"{task}:", "", f"| system | seeds | {' | '.join(metrics)} | fine-tune s |",
                  "|---" * (len(metrics) + 3) + "|"]
        for system in ranked:
            seeds = ",".join(str(s) for s in sorted(scores[(task, system, main)]))
            cells = [cell_text(scores[(task, system, m)],
                               None if system == SCRATCH else scores.get((task, SCRATCH, m))) for m in metrics]
            lines.append(f"| {system} | {seeds} | {' | '.join(cells)} | "
                         f"{statistics.mean(seconds[(task, system)]):.0f} |")
        lines.append("")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="compare output directories")
    args = parser.parse_args()
    print("\n".join(tables(*collect(args.dirs))))


if __name__ == "__main__":
    main()
