"""Fixtures of the Hugging Face interchange tests: Lee text prepared once with a small bpe
tokenizer, tiny model sizes, a logits comparison, and a capture of what `transformers` logs."""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from pathlib import Path

import gensim
import pytest

from ptmkit.data.corpus import read_texts
from ptmkit.data.shards import prepare
from ptmkit.data.tokenizer import train_tokenizer

LEE = Path(gensim.__file__).parent / "test" / "test_data" / "lee_background.cor"
TINY = {"n_layers": 2, "hidden": 32, "heads": 2, "max_positions": 64}
"""A model small enough that pre-training a few steps takes a fraction of a second."""
TRAIN = {"steps": 2, "batch_size": 4, "seq_len": 32, "workers": 0, "progress": False}
LOAD_PROBLEMS = ("missing", "unexpected", "newly initialized", "not initialized", "not used", "mismatch")


@pytest.fixture(scope="session")
def lee() -> Path:
    if not LEE.is_file():
        pytest.skip(f"gensim's bundled corpus is missing: {LEE}")
    return LEE


@pytest.fixture(scope="session")
def data(lee: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Prepared shards (bpe 600, ptmkit's specials) of the Lee corpus."""
    root = tmp_path_factory.mktemp("hf-data")
    tokenizer = train_tokenizer(read_texts([lee]), kind="bpe", vocab_size=600, show_progress=False)
    prepare([lee], tokenizer, root / "d", val_fraction=0.02, progress=False)
    return root / "d"


@pytest.fixture
def tiny() -> dict:
    return dict(TINY)


@pytest.fixture
def train() -> dict:
    return dict(TRAIN)


@pytest.fixture
def hf_messages():
    """`with hf_messages() as messages:` collects what transformers logs and warns meanwhile."""

    @contextmanager
    def capture():
        from transformers.utils import logging as hf_logging
        messages: list[str] = []

        class Collect(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                messages.append(record.getMessage())

        logger, handler = hf_logging.get_logger("transformers"), Collect(logging.DEBUG)
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_warning()
        logger.addHandler(handler)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                yield messages
            messages += [str(w.message) for w in caught]
        finally:
            logger.removeHandler(handler)
            hf_logging.set_verbosity(verbosity)

    return capture


def load_problems(messages: list[str]) -> list[str]:
    """The messages that speak of weights that were missing, unexpected or left uninitialized."""
    return [m for m in messages if any(word in m.lower() for word in LOAD_PROBLEMS)]


@pytest.fixture
def problems():
    return load_problems
