"""Fixtures of the subprocess training tests: prepared Lee shards (seq-len 64) and a runner for
`ptmkit` as a real process, alone or under torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def lee_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """gensim's Lee news corpus as BPE-1000 shards."""
    import gensim
    from ptmkit.data.corpus import read_texts
    from ptmkit.data.shards import prepare
    from ptmkit.data.tokenizer import train_tokenizer
    lee = Path(gensim.__file__).parent / "test" / "test_data" / "lee_background.cor"
    if not lee.is_file():
        pytest.skip(f"gensim's bundled corpus is missing: {lee}")
    root = tmp_path_factory.mktemp("lee64")
    tokenizer = train_tokenizer(read_texts([lee]), kind="bpe", vocab_size=1000, show_progress=False)
    prepare([lee], tokenizer, root / "data", val_fraction=0.02, seq_len=64, progress=False)
    (root / "nodrop.yaml").write_text("size: tiny\ndropout: 0\nattention_dropout: 0\n")
    return root / "data"


@pytest.fixture(scope="session")
def child_env() -> dict[str, str]:
    """The environment of a `ptmkit` child process: one thread each (the machine is shared), no
    launcher variables, no stray warnings."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="session")
def torchrun() -> list[str]:
    """torchrun next to this interpreter, else the module it runs."""
    script = Path(sys.executable).parent / "torchrun"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "torch.distributed.run"]


@pytest.fixture
def ptmkit_process(child_env: dict[str, str], torchrun: list[str]):
    """`run(args, launcher=None, timeout=...)` -> CompletedProcess of `ptmkit ARGS` (under
    `launcher`, e.g. torchrun options, when given); fails the test on a non-zero exit."""

    def run(args: list, launcher: list[str] | None = None, timeout: float = 180,
            check: bool = True) -> subprocess.CompletedProcess:
        command = ([*torchrun, *launcher, "-m", "ptmkit"] if launcher is not None
                   else [sys.executable, "-m", "ptmkit"])
        proc = subprocess.run([*command, *map(str, args)], env=child_env, capture_output=True,
                              text=True, timeout=timeout)
        if check:
            assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-4000:]}"
        return proc

    return run


@pytest.fixture
def metrics():
    """`losses(run)` -> {step: loss} from RUN/metrics.jsonl (or another logged `key`)."""

    def losses(run: Path, key: str = "loss") -> dict[int, float]:
        lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return {m["step"]: m[key] for m in lines if key in m}

    return losses
