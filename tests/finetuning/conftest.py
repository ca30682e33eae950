"""Helpers of the token-level task tests, handed out as fixtures (--import-mode=importlib makes
conftest un-importable from the tests)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from ptmkit.data.tokenizer import train_tokenizer
from ptmkit.finetuning.run import FinetuneSpec

SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def _shared(relative: str) -> Path:
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"needs ../shared/data/{relative} (not present)")
    return path


def _scratch_spec(task: str, tokenizer: Path, out: Path, train: str, dev: str | None, **kw) -> FinetuneSpec:
    values = dict(task=task, init="scratch", tokenizer=tokenizer, out=out, train=train, dev=dev,
                  epochs=2, lr=1e-3, batch_size=16, max_length=32, progress=False)
    return FinetuneSpec(**{**values, **kw})


@pytest.fixture
def shared_data() -> Callable[[str], Path]:
    """A file of ../shared/data, or a skip saying it is absent."""
    return _shared


@pytest.fixture
def scratch_spec() -> Callable[..., FinetuneSpec]:
    """A small, fast fine-tuning run of a scratch tiny model."""
    return _scratch_spec


KEYWORDS = "river market school music garden winter bridge letter doctor window".split()


def _write_keyword_task(path: Path, n: int, seed: int) -> None:
    """Six filler words and one of great/awful: learnable from a few hundred examples."""
    rng = np.random.default_rng(seed)
    lines = ["sentence\tlabel"]
    for _ in range(n):
        label = int(rng.integers(2))
        words = list(rng.choice(KEYWORDS, size=6)) + ["great" if label else "awful"]
        rng.shuffle(words)
        lines.append(f"{' '.join(words)}\t{'pos' if label else 'neg'}")
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="session")
def keyword_task(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with train.tsv (240), dev.tsv (60) and a wordpiece tokenizer `tok/`."""
    root = tmp_path_factory.mktemp("keyword-task")
    _write_keyword_task(root / "train.tsv", 240, 0)
    _write_keyword_task(root / "dev.tsv", 60, 1)
    texts = [line.split("\t")[0] for line in (root / "train.tsv").read_text().splitlines()[1:]]
    train_tokenizer(texts * 3, kind="wordpiece", vocab_size=300, show_progress=False).save(root / "tok")
    return root


@pytest.fixture
def keyword_spec() -> Callable[..., FinetuneSpec]:
    """FinetuneSpec builder for `keyword_task`: a scratch classifier, overridable by keyword."""
    def build(files: Path, out: Path, **kw) -> FinetuneSpec:
        values = dict(task="classify", init="scratch", tokenizer=files / "tok", out=out,
                      train=str(files / "train.tsv"), dev=str(files / "dev.tsv"),
                      text_fields=["sentence"], epochs=4, lr=1e-3, batch_size=16, max_length=16,
                      progress=False)
        return FinetuneSpec(**{**values, **kw})
    return build
