"""The pre-training side of a compare as a Markdown table: one row per run under DIR/pretrain/.

    python experiments/pretrain_table.py runs/objectives_mini

Columns: objective, wall seconds, tokens seen, tokens/s, steps, the loss of the last five logged
steps (mean) against the first five, the final validation loss, and the effective rank of the
features handed to fine-tuning against the same network's at initialisation (a collapse check,
`ptmkit/train/feature_rank.py`). Losses of different
objectives measure different things (an MLM loss is not a CLM loss); within one objective they
compare budgets.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def logged_losses(run: Path) -> list[float]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    records = (json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return [r["loss"] for r in records if "loss" in r and "val_loss" not in r]


def row(run: Path) -> str | None:
    summary_path = run / "summary.json"
    if not summary_path.is_file():
        return None
    summary = json.loads(summary_path.read_text())
    losses = logged_losses(run)
    first = sum(losses[:5]) / len(losses[:5]) if losses else float("nan")
    last = sum(losses[-5:]) / len(losses[-5:]) if losses else summary.get("final_loss", float("nan"))
    val = summary.get("final_val_loss")
    rank, at_init = summary.get("feature_rank"), summary.get("feature_rank_at_init")
    cells = [run.name, f"{summary['train_seconds']:.0f}", f"{summary['tokens']:,}",
             f"{summary['tokens_per_s']:,.0f}", str(summary["steps"]), f"{first:.3f} → {last:.3f}",
             f"{val:.3f}" if val is not None else "—",
             f"{rank:.0f} / {at_init:.0f}" if rank is not None and at_init is not None else "—"]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("compare_dir", type=Path)
    args = parser.parse_args()
    print("| run | seconds | tokens | tokens/s | steps | train loss, first 5 → last 5 logged | val loss "
          "| feature rank / at init |")
    print("|---|---|---|---|---|---|---|---|")
    for run in sorted((args.compare_dir / "pretrain").iterdir()):
        line = row(run)
        if line:
            print(line)


if __name__ == "__main__":
    main()
