"""Every committed experiment config still passes compare's validation, so the commands that
EXPERIMENTS.md prints keep working as the schema grows."""

from __future__ import annotations

from pathlib import Path

import pytest

from ptmkit.compare.config import load_compare_config

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO / ".." / "shared" / "data"
CONFIGS = sorted((REPO / "experiments").glob("*.yaml"))


def test_there_are_configs() -> None:
    assert len(CONFIGS) >= 8


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="the experiment configs read ../shared/data (not present)")
@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_experiment_config_is_valid(path: Path) -> None:
    if "../.gpu/" in path.read_text() and not (REPO / ".gpu" / "data").is_dir():
        pytest.skip(f"{path.name} reads copies of ../shared under .gpu/ (not made here; its header says how)")
    made = [word.strip("[],") for word in path.read_text().split() if word.strip("[],").startswith("../runs/")]
    missing = [name for name in made if not (path.parent / name).exists()]
    if missing:
        pytest.skip(f"{path.name} reads {missing[0]}, which a script writes first (its header says how)")
    config = load_compare_config(path)
    assert config.tasks and config.seeds
