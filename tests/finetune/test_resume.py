"""`ptmkit finetune --resume`: a run interrupted after an epoch continues from that epoch's
checkpoint exactly as if it had never stopped."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import ptmkit.finetune.run as run_module
from ptmkit.data.tokenizer import train_tokenizer
from ptmkit.errors import UserError
from ptmkit.finetune.run import FinetuneSpec, finetune

WORDS = "river market school music garden winter bridge letter doctor window".split()


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ft-resume")
    rng = np.random.default_rng(0)
    for name, n in (("train.tsv", 160), ("dev.tsv", 40)):
        lines = ["sentence\tlabel"]
        for _ in range(n):
            label = int(rng.integers(2))
            words = list(rng.choice(WORDS, size=6)) + ["great" if label else "awful"]
            rng.shuffle(words)
            lines.append(f"{' '.join(words)}\t{'pos' if label else 'neg'}")
        (root / name).write_text("\n".join(lines) + "\n")
    texts = [line.split("\t")[0] for line in (root / "train.tsv").read_text().splitlines()[1:]]
    train_tokenizer(texts * 3, kind="wordpiece", vocab_size=300, show_progress=False).save(root / "tok")
    return root


def spec(files: Path, out: Path, **kw) -> FinetuneSpec:
    values = dict(task="classify", init="scratch", tokenizer=files / "tok", out=out,
                  train=str(files / "train.tsv"), dev=str(files / "dev.tsv"), text_fields=["sentence"],
                  epochs=3, lr=1e-3, batch_size=16, max_length=16, progress=False)
    return FinetuneSpec(**{**values, **kw})


def test_resume_after_an_epoch_repeats_the_uninterrupted_run(files: Path, tmp_path: Path, monkeypatch) -> None:
    # a scratch backbone is initialised before finetune() seeds torch: seed here so that the two
    # runs below start from the same weights (the resumed one loads everything from its checkpoint)
    torch.manual_seed(0)
    full = finetune(spec(files, tmp_path / "full"))

    evaluate, calls = run_module.evaluate_items, []

    def crash_in_epoch_2(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated crash")
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(run_module, "evaluate_items", crash_in_epoch_2)
    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        finetune(spec(files, tmp_path / "part"))
    monkeypatch.setattr(run_module, "evaluate_items", evaluate)
    part = tmp_path / "part"
    assert json.loads((part / "checkpoint" / "state.json").read_text())["trainer"]["epoch"] == 1

    with pytest.raises(UserError, match="other options.*lr"):
        finetune(spec(files, part, lr=2e-3, resume=True))
    resumed = finetune(spec(files, part, resume=True))
    assert resumed == full
    assert (part / "metrics.jsonl").read_text() == (tmp_path / "full" / "metrics.jsonl").read_text()
    assert (part / "model.safetensors").read_bytes() == (tmp_path / "full" / "model.safetensors").read_bytes()
    assert not (part / "checkpoint").exists() and not (part / "checkpoints").exists(), "finished: no checkpoint left"


def test_resume_needs_a_checkpoint(files: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="nothing to resume"):
        finetune(spec(files, tmp_path / "none", resume=True))
