"""Helpers of the token-level task tests, handed out as fixtures (--import-mode=importlib makes
conftest un-importable from the tests)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from ptmkit.finetune.run import FinetuneSpec

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
