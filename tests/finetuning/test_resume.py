"""`ptmkit finetune --resume`: a run interrupted after an epoch continues from that epoch's
checkpoint exactly as if it had never stopped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import ptmkit.finetuning.run as run_module
from ptmkit.errors import UserError
from ptmkit.finetuning.run import finetune

@pytest.mark.parametrize("head_epochs", [0, 2], ids=["plain", "head-first"])
def test_resume_after_an_epoch_repeats_the_uninterrupted_run(keyword_task: Path, keyword_spec, tmp_path: Path,
                                                               monkeypatch, head_epochs: int) -> None:
    """With --head-epochs the resumed run does not fit the head again: the checkpoint holds it."""
    # a scratch backbone is initialised before finetune() seeds torch: seed here so that the two
    # runs below start from the same weights (the resumed one loads everything from its checkpoint)
    torch.manual_seed(0)
    full = finetune(keyword_spec(keyword_task, tmp_path / "full", epochs=3, head_epochs=head_epochs))

    evaluate, calls = run_module.evaluate_items, []

    def crash_in_epoch_2(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated crash")
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(run_module, "evaluate_items", crash_in_epoch_2)
    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):  # a checkpoint after every epoch, however short
        finetune(keyword_spec(keyword_task, tmp_path / "part", epochs=3, checkpoint_seconds=0,
                              head_epochs=head_epochs))
    monkeypatch.setattr(run_module, "evaluate_items", evaluate)
    part = tmp_path / "part"
    assert json.loads((part / "checkpoint" / "state.json").read_text())["trainer"]["epoch"] == 1

    with pytest.raises(UserError, match="other options.*lr"):
        finetune(keyword_spec(keyword_task, part, lr=2e-3, resume=True, epochs=3, head_epochs=head_epochs))
    with pytest.raises(UserError, match="other options.*epochs"):  # more epochs: another lr schedule
        finetune(keyword_spec(keyword_task, part, resume=True, epochs=6, head_epochs=head_epochs))
    monkeypatch.chdir(tmp_path)  # started with an absolute --out, resumed with a relative one
    resumed = finetune(keyword_spec(keyword_task, Path("part"), resume=True, epochs=3, head_epochs=head_epochs))
    assert resumed == full
    assert (part / "metrics.jsonl").read_text() == (tmp_path / "full" / "metrics.jsonl").read_text()
    assert (part / "model.safetensors").read_bytes() == (tmp_path / "full" / "model.safetensors").read_bytes()
    assert not (part / "checkpoint").exists() and not (part / "checkpoints").exists(), "finished: no checkpoint left"


def test_resume_needs_a_checkpoint(keyword_task: Path, keyword_spec, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="nothing to resume"):
        finetune(keyword_spec(keyword_task, tmp_path / "none", resume=True, epochs=3))


@pytest.mark.parametrize("state", ['{"trainer": {"step": 3}}', "{not json"], ids=["pretraining", "corrupt"])
def test_resume_refuses_a_checkpoint_that_is_no_fine_tunings(keyword_task: Path, keyword_spec, tmp_path: Path,
                                                             state: str) -> None:
    (tmp_path / "run" / "checkpoint").mkdir(parents=True)
    (tmp_path / "run" / "checkpoint" / "state.json").write_text(state)
    with pytest.raises(UserError, match="not the checkpoint of an interrupted fine-tuning"):
        finetune(keyword_spec(keyword_task, tmp_path / "run", resume=True, epochs=3))


def test_short_runs_write_no_checkpoint_and_the_last_epoch_never_does(keyword_task: Path, keyword_spec,
                                                                      tmp_path: Path, monkeypatch) -> None:
    saved = []
    save = run_module._save_epoch
    monkeypatch.setattr(run_module, "_save_epoch", lambda spec, *args: saved.append(args[3]) or save(spec, *args))
    finetune(keyword_spec(keyword_task, tmp_path / "quick", epochs=3))  # seconds: under the 60 s default
    assert saved == []
    finetune(keyword_spec(keyword_task, tmp_path / "every", epochs=3, checkpoint_seconds=0))
    assert saved == [1, 2]  # the third is the end: its outputs are written instead


def test_resume_keeping_the_last_epoch_repeats_the_uninterrupted_run(keyword_task: Path, keyword_spec,
                                                                     tmp_path: Path, monkeypatch) -> None:
    """--keep-epoch last scores nothing before the end, so its checkpoints carry no best epoch:
    resumed after epoch 1 it still ends with the uninterrupted run's weights and scores."""
    torch.manual_seed(0)
    full = finetune(keyword_spec(keyword_task, tmp_path / "full", epochs=3, keep_epoch="last"))
    save = run_module._save_epoch

    def crash_after_first_checkpoint(spec, *args):
        save(spec, *args)
        raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(run_module, "_save_epoch", crash_after_first_checkpoint)
    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        finetune(keyword_spec(keyword_task, tmp_path / "part", epochs=3, keep_epoch="last", checkpoint_seconds=0))
    monkeypatch.setattr(run_module, "_save_epoch", save)
    part = tmp_path / "part"
    assert json.loads((part / "checkpoint" / "state.json").read_text())["trainer"]["epoch"] == 1
    resumed = finetune(keyword_spec(keyword_task, part, epochs=3, keep_epoch="last", resume=True))
    assert resumed == full and resumed["epoch"] == 3
    assert (part / "metrics.jsonl").read_text() == (tmp_path / "full" / "metrics.jsonl").read_text()
    assert (part / "model.safetensors").read_bytes() == (tmp_path / "full" / "model.safetensors").read_bytes()
