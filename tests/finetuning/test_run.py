"""End to end: fine-tuning learns a learnable task, keeps the best epoch, evaluates consistently."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ptmkit.errors import UserError
from ptmkit.finetuning.run import evaluate, finetune

def test_scratch_model_learns_a_keyword_task(keyword_task, keyword_spec, tmp_path) -> None:
    result = finetune(keyword_spec(keyword_task, tmp_path / "run"))
    assert result["accuracy"] >= 0.9
    run = tmp_path / "run"
    for name in ("config.yaml", "model.safetensors", "metrics.jsonl", "eval.json", "tokenizer/tokenizer.json"):
        assert (run / name).exists()
    lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    best = max(lines, key=lambda l: l["dev_accuracy"])
    assert result["epoch"] == best["epoch"] and result["accuracy"] == best["dev_accuracy"]
    again = evaluate(run, str(keyword_task / "dev.tsv"))
    assert again["accuracy"] == pytest.approx(result["accuracy"])


def test_budget_and_held_out_dev(keyword_task, keyword_spec, tmp_path) -> None:
    result = finetune(keyword_spec(keyword_task, tmp_path / "run", dev=None, max_train_examples=50, epochs=1))
    assert result["train_examples"] == 50
    assert result["dev_examples"] == 24  # 10% of 240, stratified, never in the training budget


def test_cross_validation_folds_score_every_example_once(keyword_task, keyword_spec, tmp_path) -> None:
    from ptmkit.finetuning.run import _prepare
    def fold(i: int, seed: int = 0):
        prepared = _prepare(keyword_spec(keyword_task, tmp_path / "run", dev=None, cv_folds=5, fold=i, seed=seed))
        return {tuple(item["input_ids"].tolist()) for item in prepared.dev}, prepared
    folds = [fold(i) for i in range(5)]
    ones = sum(sum(prepared.dev_targets) for _, prepared in folds)
    for dev, prepared in folds:
        assert len(prepared.dev) == 48 and len(prepared.train) == 192  # 240 / 5
        assert not dev & {tuple(item["input_ids"].tolist()) for item in prepared.train}
        assert abs(sum(prepared.dev_targets) - ones / 5) <= 1  # stratified: each fold keeps the class shares
    assert sum(len(dev) for dev, _ in folds) == len({tuple(x) for dev, _ in folds for x in dev})
    assert fold(0, seed=1)[0] != folds[0][0]  # another seed, another partition
    with pytest.raises(UserError, match="fold 5 of 5"):
        fold(5)
    with pytest.raises(UserError, match="at least 2 folds"):
        _prepare(keyword_spec(keyword_task, tmp_path / "run", dev=None, cv_folds=1))


def test_input_errors_leave_nothing(keyword_task, keyword_spec, tmp_path) -> None:
    with pytest.raises(UserError, match="needs a tokenizer"):
        finetune(keyword_spec(keyword_task, tmp_path / "a", tokenizer=None))
    with pytest.raises(UserError, match="field 'txt' not found.*sentence"):
        finetune(keyword_spec(keyword_task, tmp_path / "b", text_fields=["txt"]))
    dev = tmp_path / "dev.tsv"
    dev.write_text("sentence\tlabel\nriver great\tmeh\n")
    with pytest.raises(UserError, match="'meh'"):
        finetune(keyword_spec(keyword_task, tmp_path / "c", dev=str(dev)))
    assert not any((tmp_path / d).exists() for d in "abc")


def test_held_out_training_slice_picks_the_epoch(keyword_task, keyword_spec, tmp_path) -> None:
    """--select-fraction: the epoch is chosen on training examples the model never trained on,
    and the dev set is scored once, with that epoch's weights."""
    run = tmp_path / "run"
    result = finetune(keyword_spec(keyword_task, run, max_train_examples=100, select_fraction=0.2, epochs=3))
    assert (result["train_examples"], result["select_examples"], result["dev_examples"]) == (80, 20, 60)
    lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    chosen = max(lines, key=lambda l: l["select_accuracy"])  # first best on ties, as the loop keeps
    assert result["epoch"] == chosen["epoch"]
    assert result["select_accuracy"] == chosen["select_accuracy"]
    assert not any("dev_accuracy" in l for l in lines)  # dev plays no part until the end
    assert evaluate(run, str(keyword_task / "dev.tsv"))["accuracy"] == pytest.approx(result["accuracy"])
    for bad in (0.0001, 1.5):
        with pytest.raises(UserError, match="--select-fraction"):
            finetune(keyword_spec(keyword_task, tmp_path / f"bad{bad}", max_train_examples=100,
                                  select_fraction=bad))
        assert not (tmp_path / f"bad{bad}").exists()


def test_keep_epoch_last_scores_only_the_final_model(keyword_task, keyword_spec, tmp_path, monkeypatch) -> None:
    """--keep-epoch last: no epoch is chosen on any data; dev is scored once, after the last epoch,
    and the saved weights are that epoch's."""
    import ptmkit.finetuning.run as run_module
    scored = []
    evaluate_items = run_module.evaluate_items
    monkeypatch.setattr(run_module, "evaluate_items",
                        lambda *a, **k: scored.append(len(a[2])) or evaluate_items(*a, **k))
    run = tmp_path / "run"
    torch.manual_seed(0)
    result = finetune(keyword_spec(keyword_task, run, epochs=3, keep_epoch="last"))
    lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [l["epoch"] for l in lines] == [1, 2, 3] and result["epoch"] == 3
    assert [("dev_accuracy" in l) for l in lines] == [False, False, True]
    assert scored == [60] and result["accuracy"] == lines[-1]["dev_accuracy"]
    assert evaluate(run, str(keyword_task / "dev.tsv"))["accuracy"] == pytest.approx(result["accuracy"])
    # the same training, keeping the best epoch instead: the same final weights, scored every epoch
    torch.manual_seed(0)
    best = finetune(keyword_spec(keyword_task, tmp_path / "best", epochs=3))
    best_lines = [json.loads(l) for l in (tmp_path / "best" / "metrics.jsonl").read_text().splitlines()]
    assert [l["loss"] for l in best_lines] == [l["loss"] for l in lines]
    assert best_lines[-1]["dev_accuracy"] == result["accuracy"] and best["accuracy"] >= result["accuracy"]


def test_keep_epoch_is_checked(keyword_task, keyword_spec, tmp_path) -> None:
    with pytest.raises(UserError, match="--keep-epoch 'first' is not one of best, last"):
        finetune(keyword_spec(keyword_task, tmp_path / "a", keep_epoch="first"))
    with pytest.raises(UserError, match="--patience 2 stops on dev scores that --keep-epoch last never computes"):
        finetune(keyword_spec(keyword_task, tmp_path / "b", keep_epoch="last", patience=2))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_min_steps_adds_epochs_for_small_budgets(keyword_task, keyword_spec, tmp_path) -> None:
    """20 examples in batches of 16 make 2 steps an epoch: 1 epoch with --min-steps 7 runs 4."""
    run = tmp_path / "run"
    finetune(keyword_spec(keyword_task, run, max_train_examples=20, epochs=1, min_steps=7))
    lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [l["epoch"] for l in lines] == [1, 2, 3, 4] and lines[-1]["step"] == 8
    finetune(keyword_spec(keyword_task, tmp_path / "big", max_train_examples=20, epochs=5, min_steps=7))
    assert len((tmp_path / "big" / "metrics.jsonl").read_text().splitlines()) == 5  # epochs already enough


def scored_epochs(run: Path) -> list[int]:
    lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    return [l["epoch"] for l in lines if any(k.startswith("dev_") for k in l)]


@pytest.mark.parametrize("epochs, min_steps, scored", [
    (2, 14, [3, 6, 7]),  # 7 epochs of 2 steps: scored every 7 // 2 = 3rd epoch and after the last
    (3, 8, [1, 2, 3, 4]),  # 4 // 3 = 1: every epoch, as without --min-steps
    (5, 0, [1, 2, 3, 4, 5]),
])
def test_epochs_added_by_min_steps_are_not_each_scored(keyword_task, keyword_spec, tmp_path, epochs,
                                                       min_steps, scored) -> None:
    run = tmp_path / "run"
    result = finetune(keyword_spec(keyword_task, run, max_train_examples=20, epochs=epochs, min_steps=min_steps))
    assert scored_epochs(run) == scored and result["epoch"] in scored


def test_glue_cola_picks_epochs_and_reports_by_mcc(keyword_task, keyword_spec, tmp_path) -> None:
    """A header-less CoLA folder: the official metric (MCC), not accuracy, is the main one."""
    import numpy as np
    rng = np.random.default_rng(0)
    glue = tmp_path / "glue" / "CoLA"
    glue.mkdir(parents=True)
    for name, n in (("train.tsv", 120), ("dev.tsv", 40)):
        rows = []
        for _ in range(n):
            label = int(rng.integers(2))
            rows.append(f"src\t{label}\t\t{'river great' if label else 'river awful'} market")
        (glue / name).write_text("\n".join(rows) + "\n")
    result = finetune(keyword_spec(keyword_task, tmp_path / "run", task="glue:cola", data_dir=str(tmp_path / "glue"),
                                   train=None, dev=None, text_fields=["sentence"], epochs=2))
    assert result["main_metric"] == "mcc" and -1 <= result["mcc"] <= 1
    lines = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert result["epoch"] == max(lines, key=lambda l: l["dev_mcc"])["epoch"]


def test_glue_mnli_scores_the_mismatched_dev_set_too(keyword_task, keyword_spec, tmp_path) -> None:
    """MNLI's official scores are matched and mismatched accuracy: the epoch is picked on the
    matched dev set, and the kept model scores the mismatched one once."""
    glue = tmp_path / "MNLI"
    glue.mkdir()
    words = {"entailment": "great", "contradiction": "awful", "neutral": "plain"}
    for name, n, topic in (("train.tsv", 90, "river"), ("dev_matched.tsv", 30, "river"),
                           ("dev_mismatched.tsv", 21, "winter")):
        rows = ["sentence1\tsentence2\tgold_label"]
        rows += [f"{topic} market\t{words[label]} {topic}\t{label}" for label in list(words) * (n // 3)]
        (glue / name).write_text("\n".join(rows) + "\n")
    result = finetune(keyword_spec(keyword_task, tmp_path / "run", task="glue:mnli", data_dir=str(glue),
                                   train=None, dev=None, text_fields=["text"], epochs=2))
    assert result["dev_examples"] == 30
    assert result["mismatched_accuracy"] == evaluate(tmp_path / "run", str(glue / "dev_mismatched.tsv"))["accuracy"]
    line = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert "dev_accuracy" in line and not any(key.startswith("mismatched") for key in line)


def test_freeze_embeddings_keeps_token_vectors_and_trains_the_rest(keyword_task, keyword_spec, tmp_path) -> None:
    from safetensors.torch import load_file
    from ptmkit.finetuning.model import load_backbone
    torch.manual_seed(0)  # the run builds its scratch backbone right after seeding with --seed
    initial = load_backbone("scratch", tokenizer_dir=keyword_task / "tok", max_length=16).network.state_dict()
    for frozen in (True, False):
        run = tmp_path / f"frozen-{frozen}"
        result = finetune(keyword_spec(keyword_task, run, epochs=2, freeze_embeddings=frozen))
        trained = load_file(run / "model.safetensors")
        same = {name: torch.equal(trained[f"backbone.{name}"], initial[name])
                for name in ("embed.tokens.weight", "embed.positions.weight", "encoder.layers.0.fc_in.weight")}
        assert same == {"embed.tokens.weight": frozen, "embed.positions.weight": False, "encoder.layers.0.fc_in.weight": False}
        assert result["accuracy"] >= 0.9  # the keyword task is learnt on fixed random vectors too
