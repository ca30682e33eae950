"""experiments/cells_table.py, which merges the E3c groups' cells into EXPERIMENTS.md's table:
scratch repeated by every group counts once, gains compare the same seeds, and two groups that
disagree on the same cell stop it."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "cells_table.py"


@pytest.fixture(scope="module")
def cells_table():
    spec = importlib.util.spec_from_file_location("cells_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_cell(base: Path, system: str, seed: int, rouge: float, bleu: float) -> None:
    cell = base / "finetune" / "mt" / system / f"b100-s{seed}"
    cell.mkdir(parents=True)
    (cell / "eval.json").write_text(json.dumps({"rougeL": rouge, "bleu": bleu, "main_metric": "rougeL",
                                                "finetune_seconds": 10.0 * (seed + 1)}))


def test_groups_merge_scratch_once_and_gains_use_the_same_seeds(cells_table, tmp_path) -> None:
    g0, g1 = tmp_path / "g0", tmp_path / "g1"
    for group in (g0, g1):
        write_cell(group, "A-scratch", 0, 0.30, 0.10)
        write_cell(group, "A-scratch", 1, 0.34, 0.12)
    write_cell(g0, "B-mlm", 0, 0.40, 0.15)
    write_cell(g0, "B-mlm", 1, 0.42, 0.16)
    write_cell(g1, "B-clm", 1, 0.36, 0.13)  # one seed only: its gain is against scratch's seed 1
    scores, seconds = cells_table.collect([g0, g1])
    assert scores[("mt", "A-scratch", "rougeL")] == pytest.approx({0: 30.0, 1: 34.0})
    assert seconds[("mt", "A-scratch")] == [10.0, 20.0]  # not four entries
    rows = cells_table.tables(scores, seconds)
    assert rows[:4] == ["mt:", "", "| system | seeds | rougeL | bleu | fine-tune s |", "|---|---|---|---|---|"]
    assert rows[4] == "| B-mlm | 0,1 | 41.0 ± 1.4 (+9.0) | 15.5 ± 0.7 (+4.5) | 15 |"
    assert rows[5] == "| B-clm | 1 | 36.0 (+2.0) | 13.0 (+1.0) | 20 |"
    assert rows[6] == "| A-scratch | 0,1 | 32.0 ± 2.8 | 11.0 ± 1.4 | 15 |"


def test_two_groups_that_disagree_on_a_cell_stop_the_table(cells_table, tmp_path) -> None:
    write_cell(tmp_path / "g0", "A-scratch", 0, 0.30, 0.10)
    write_cell(tmp_path / "g1", "A-scratch", 0, 0.31, 0.10)
    with pytest.raises(SystemExit, match=r"g1/finetune/mt/A-scratch/b100-s0/eval.json: rougeL 31.0000 differs"):
        cells_table.collect([tmp_path / "g0", tmp_path / "g1"])
