"""End to end: fine-tuning learns a learnable task, keeps the best epoch, evaluates consistently."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ptmkit.data.tokenizer import train_tokenizer
from ptmkit.errors import UserError
from ptmkit.finetune.run import FinetuneSpec, evaluate, finetune

WORDS = "river market school music garden winter bridge letter doctor window".split()


def write_sentiment(path: Path, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    lines = ["sentence\tlabel"]
    for _ in range(n):
        label = int(rng.integers(2))
        words = list(rng.choice(WORDS, size=6)) + ["great" if label else "awful"]
        rng.shuffle(words)
        lines.append(f"{' '.join(words)}\t{'pos' if label else 'neg'}")
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("ft")
    write_sentiment(root / "train.tsv", 240, 0)
    write_sentiment(root / "dev.tsv", 60, 1)
    texts = [line.split("\t")[0] for line in (root / "train.tsv").read_text().splitlines()[1:]]
    train_tokenizer(texts * 3, kind="wordpiece", vocab_size=300, show_progress=False).save(root / "tok")
    return root


def spec(files: Path, out: Path, **kw) -> FinetuneSpec:
    values = dict(task="classify", init="scratch", tokenizer=files / "tok", out=out,
                  train=str(files / "train.tsv"), dev=str(files / "dev.tsv"), text_fields=["sentence"],
                  epochs=4, lr=1e-3, batch_size=16, max_length=16, progress=False)
    return FinetuneSpec(**{**values, **kw})


def test_scratch_model_learns_a_keyword_task(files, tmp_path) -> None:
    result = finetune(spec(files, tmp_path / "run"))
    assert result["accuracy"] >= 0.9
    run = tmp_path / "run"
    for name in ("config.yaml", "model.safetensors", "metrics.jsonl", "eval.json", "tokenizer/tokenizer.json"):
        assert (run / name).exists()
    lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    best = max(lines, key=lambda l: l["dev_accuracy"])
    assert result["epoch"] == best["epoch"] and result["accuracy"] == best["dev_accuracy"]
    again = evaluate(run, str(files / "dev.tsv"))
    assert again["accuracy"] == pytest.approx(result["accuracy"])


def test_budget_and_held_out_dev(files, tmp_path) -> None:
    result = finetune(spec(files, tmp_path / "run", dev=None, max_train_examples=50, epochs=1))
    assert result["train_examples"] == 50
    assert result["dev_examples"] == 24  # 10% of 240, stratified, never in the training budget


def test_input_errors_leave_nothing(files, tmp_path) -> None:
    with pytest.raises(UserError, match="needs a tokenizer"):
        finetune(spec(files, tmp_path / "a", tokenizer=None))
    with pytest.raises(UserError, match="field 'txt' not found.*sentence"):
        finetune(spec(files, tmp_path / "b", text_fields=["txt"]))
    dev = tmp_path / "dev.tsv"
    dev.write_text("sentence\tlabel\nriver great\tmeh\n")
    with pytest.raises(UserError, match="'meh'"):
        finetune(spec(files, tmp_path / "c", dev=str(dev)))
    assert not any((tmp_path / d).exists() for d in "abc")
