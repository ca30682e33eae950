"""Fine-tuning's input checks: bad options, outputs and scores fail with one UserError, before
--out is created, replaced or emptied; evaluate names its own flags."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
from pathlib import Path

import pytest
import yaml

import ptmkit.finetuning.run as run_module
import ptmkit.finetuning.search as search_module
from ptmkit.cli import main
from ptmkit.data.tokenizer import Tokenizer
from ptmkit.errors import RunStopped, UserError
from ptmkit.finetuning.run import evaluate, finetune
from ptmkit.finetuning.search import SEARCH_SELECT_FRACTION, finetune_search
from ptmkit.model.config import resolve_model_config
from ptmkit.objectives import get_objective
from ptmkit.objectives.base import Vocab
from ptmkit.train.checkpoint import atomic_save_model

KEEP = b"an earlier run's weights\n"
RUN_PARTS = ("config.yaml", "model.safetensors", "metrics.jsonl", "eval.json")


def _earlier_run(out: Path) -> None:
    """A directory that looks like a finished run: --overwrite must not destroy it on bad input."""
    out.mkdir(parents=True)
    for part in RUN_PARTS:
        (out / part).write_bytes(KEEP)


def _untouched(out: Path) -> bool:
    return sorted(p.name for p in out.iterdir()) == sorted(RUN_PARTS) and all(
        (out / part).read_bytes() == KEEP for part in RUN_PARTS)


def _pretrain_run(root: Path, tokenizer: Path, max_positions: int) -> Path:
    """A `ptmkit pretrain` run directory holding a fresh tiny MLM with `max_positions` positions."""
    tok = Tokenizer.load(tokenizer)
    objective = get_objective("mlm")(Vocab.of(tok), 16)
    cfg = resolve_model_config("tiny", vocab_size=tok.vocab_size, layout=objective.layout, max_positions=max_positions)
    run = root / "pre"
    run.mkdir(parents=True)
    atomic_save_model(objective.build_model(cfg), run / "model.safetensors")
    tok.save(run / "tokenizer")
    config = {"kind": "pretrain", "objective": "mlm", "objective_options": dataclasses.asdict(objective.options),
              "model": cfg.to_dict(), "train": {"seq_len": 16}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    return run


# ---- 1. no finite score ------------------------------------------------------------------
def _scores(monkeypatch: pytest.MonkeyPatch, per_epoch: list[float]) -> None:
    """Make the epochs score `per_epoch` (accuracy), one value per call, the last one repeating."""
    real, calls = run_module.evaluate_items, []

    def fake(model, task, items, targets, batch_size):
        metrics = real(model, task, items, targets, batch_size)
        calls.append(1)
        return {**metrics, "accuracy": per_epoch[min(len(calls), len(per_epoch)) - 1]}
    monkeypatch.setattr(run_module, "evaluate_items", fake)


def test_no_finite_score_stops_with_a_user_error(keyword_task, keyword_spec, tmp_path, monkeypatch) -> None:
    """NaN is never > -inf: no epoch was stored and load_state_dict raised KeyError('state')."""
    _scores(monkeypatch, [math.nan])
    with pytest.raises(RunStopped, match="no epoch scored a finite accuracy on the dev set"):
        finetune(keyword_spec(keyword_task, tmp_path / "run", epochs=2, max_train_examples=32))
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_a_nan_epoch_is_never_the_best(keyword_task, keyword_spec, tmp_path, monkeypatch) -> None:
    _scores(monkeypatch, [0.25, math.nan, math.inf])
    result = finetune(keyword_spec(keyword_task, tmp_path / "run", epochs=3, max_train_examples=32))
    assert result["epoch"] == 1 and result["accuracy"] == 0.25


def test_a_diverged_run_is_never_kept_though_its_predictions_still_score(keyword_task, keyword_spec,
                                                                          tmp_path) -> None:
    """NaN weights argmax every example to class 0: a finite accuracy (the majority share), so only
    the training loss tells; a search would otherwise keep such a rate where the others scored low."""
    spec = keyword_spec(keyword_task, tmp_path / "run", epochs=2, lr=1e6, max_train_examples=64)
    with pytest.raises(RunStopped, match="training loss diverged"):
        finetune(spec)
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isnan(line["loss"]) and math.isfinite(line["dev_accuracy"]) for line in lines)
    assert not (tmp_path / "run" / "model.safetensors").exists() and not (tmp_path / "run" / "eval.json").exists()


def test_a_search_leaves_out_a_rate_that_stopped(keyword_task, keyword_spec, tmp_path, monkeypatch) -> None:
    real = search_module.finetune

    def stop_fast_rates(spec):
        if spec.lr > 1e-2:
            raise RunStopped("no epoch scored a finite accuracy", str(spec.out), "lower --lr")
        return real(spec)
    monkeypatch.setattr(search_module, "finetune", stop_fast_rates)
    spec = keyword_spec(keyword_task, tmp_path / "run", epochs=1, max_train_examples=40)
    with pytest.warns(UserWarning, match="--lr 0.5 left out"):
        result = finetune_search(spec, [1e-3, 0.5])
    assert result["lr"] == 1e-3 and [s["lr"] for s in result["search"]] == [1e-3, 0.5]
    assert "stopped" in result["search"][1]
    with pytest.raises(RunStopped, match="every learning rate stopped"), pytest.warns(UserWarning):
        finetune_search(dataclasses.replace(spec, out=tmp_path / "run2"), [0.1, 0.5])


# ---- 2. a search replaces an earlier run only after its input checked out ------------------
def test_search_overwrite_keeps_the_earlier_run_on_bad_input(keyword_task, keyword_spec, tmp_path) -> None:
    out = tmp_path / "run"
    _earlier_run(out)
    for bad in ({"train": str(tmp_path / "trian.tsv")}, {"text_fields": ["txt"]}, {"dev_fraction": 1.5}):
        with pytest.raises(UserError):
            finetune_search(keyword_spec(keyword_task, out, overwrite=True, **bad), [1e-3, 1e-4])
        assert _untouched(out), bad


# ---- 3. --max-length past the model's positions ---------------------------------------------
def test_max_length_beyond_the_positions_fails_for_every_init(keyword_task, keyword_spec, tmp_path) -> None:
    pre = _pretrain_run(tmp_path, keyword_task / "tok", max_positions=32)
    for init, kw, limit in ((str(pre), {"tokenizer": None}, 32), ("scratch", {}, 512)):
        out = tmp_path / f"ft-{limit}"
        with pytest.raises(UserError, match=f"--max-length {limit + 1} exceeds the model's {limit} positions"):
            finetune(keyword_spec(keyword_task, out, init=init, max_length=limit + 1, **kw))
        assert not out.exists()
    finetune(keyword_spec(keyword_task, tmp_path / "ok", init=str(pre), tokenizer=None, max_length=32,
                          epochs=1, max_train_examples=16))  # exactly the positions it has


# ---- 4. shares, budgets and fields that leave nothing to train on ---------------------------
@pytest.mark.parametrize("options, flag", [
    ({"dev": None, "dev_fraction": 1.0}, "--dev-fraction"),
    ({"dev": None, "dev_fraction": 1.5}, "--dev-fraction"),
    ({"dev": None, "dev_fraction": 0.0}, "--dev-fraction"),
    ({"dev": None, "dev_fraction": -0.1}, "--dev-fraction"),
    ({"max_train_examples": 0}, "--max-train-examples"),
    ({"max_train_examples": -3}, "--max-train-examples"),
    ({"text_fields": []}, "--text-fields"),
    ({"text_fields": [""]}, "--text-fields"),
])
def test_options_that_leave_nothing_to_train_on(keyword_task, keyword_spec, tmp_path, options, flag) -> None:
    out = tmp_path / "run"
    with pytest.raises(UserError) as caught:
        finetune(keyword_spec(keyword_task, out, **options))
    assert caught.value.where == flag
    assert not out.exists()


def test_a_dev_split_that_takes_every_example(keyword_task, keyword_spec, tmp_path) -> None:
    train = tmp_path / "two.tsv"
    train.write_text("sentence\tlabel\nriver great\tpos\nriver awful\tneg\n")
    with pytest.raises(UserError, match="--dev-fraction 0.9 of 2 training examples leaves none to train on"):
        finetune(keyword_spec(keyword_task, tmp_path / "run", train=str(train), dev=None, dev_fraction=0.9))
    assert not (tmp_path / "run").exists()


# ---- 5. --overwrite of a directory the run reads from ---------------------------------------
def test_overwrite_refuses_an_out_holding_the_inputs(keyword_task, keyword_spec, tmp_path) -> None:
    pre = _pretrain_run(tmp_path / "runs", keyword_task / "tok", max_positions=32)
    before = sorted(p.name for p in pre.iterdir())
    for out in (pre, pre.parent):  # --out is --init, or a folder above it
        with pytest.raises(UserError, match="--overwrite would delete"):
            finetune(keyword_spec(keyword_task, out, init=str(pre), tokenizer=None, overwrite=True))
        assert sorted(p.name for p in pre.iterdir()) == before
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.tsv").write_bytes((keyword_task / "train.tsv").read_bytes())
    with pytest.raises(UserError, match="--overwrite would delete"):
        finetune(keyword_spec(keyword_task, data, train=str(data / "train.tsv"), overwrite=True))
    with pytest.raises(UserError, match="--overwrite would delete"):  # the search checks it too
        finetune_search(keyword_spec(keyword_task, data, train=str(data / "train.tsv"), overwrite=True), [1e-3, 1e-4])
    assert (data / "train.tsv").is_file()


@pytest.mark.parametrize("options, flag", [
    ({"dev": "mine.tsv"}, "--dev"), ({"train": "mine.tsv"}, "--train"), ({"text_fields": ["review"]}, "--text-fields"),
    ({"label_field": "stars"}, "--label-field"), ({"cv_folds": 5}, "--cv-folds"),
])
def test_a_glue_task_refuses_files_and_fields_it_would_ignore(keyword_task, keyword_spec, tmp_path, options,
                                                               flag) -> None:
    spec = keyword_spec(keyword_task, tmp_path / "run", task="glue:sst2", data_dir=str(tmp_path), train=None, dev=None,
                        text_fields=["text"])
    with pytest.raises(UserError, match=f"{flag} is not used by glue:sst2") as caught:
        finetune(dataclasses.replace(spec, **options))
    assert caught.value.where == flag and not (tmp_path / "run").exists()


@pytest.mark.parametrize("options, match", [
    ({"lr": math.nan}, "learning rates? must be positive"),
    ({"lr": math.inf}, "learning rates? must be positive"),
    ({"head_epochs": 2, "head_lr": math.nan}, "the rate positive"),
    ({"precision": "fp16"}, "precision 'fp16' is not one of fp32, bf16"),
    ({"weight_decay": -0.01}, "must be 0 or more"),
    ({"patience": -1}, "must be 0 or more"),
    ({"min_steps": -5}, "must be 0 or more"),
    ({"warmup_ratio": 1.0}, "warmup_ratio 1.0 is not in"),
    ({"seed": -1}, "--seed -1 is negative"),
])
def test_values_that_would_fail_mid_run_keep_the_earlier_run(keyword_task, keyword_spec, tmp_path, options,
                                                             match) -> None:
    """Checked with the options, not by the optimizer once --overwrite has removed the old run."""
    out = tmp_path / "run"
    _earlier_run(out)
    with pytest.raises(UserError, match=match):
        finetune(keyword_spec(keyword_task, out, overwrite=True, **options))
    assert _untouched(out)
    with pytest.raises(UserError, match=match):  # a searched rate is checked before the first trial
        finetune_search(keyword_spec(keyword_task, out, overwrite=True, **options), [1e-3, options.get("lr", 1e-4)])
    assert _untouched(out)


# ---- 6. cross-validation and --select-fraction options --------------------------------------
@pytest.mark.parametrize("options, match", [
    ({"dev": None, "cv_folds": 5, "fold": 9}, "fold 9 of 5"),
    ({"cv_folds": 5, "fold": 9}, "fold 9 of 5"),  # with --dev, no fold was ever cut
    ({"cv_folds": 5, "fold": 0}, "--cv-folds 5 scores folds"),  # with --dev the folds were ignored
    ({"fold": 2}, "--fold 2 without --cv-folds"),
    ({"select_fraction": -0.5}, "--select-fraction -0.5 is not a share"),
    ({"select_fraction": 1.0}, "--select-fraction 1.0 is not a share"),
])
def test_fold_and_select_options_are_checked(keyword_task, keyword_spec, tmp_path, options, match) -> None:
    with pytest.raises(UserError, match=match):
        finetune(keyword_spec(keyword_task, tmp_path / "run", **options))
    assert not (tmp_path / "run").exists()


def test_a_held_out_slice_that_chooses_nothing_is_named(keyword_task, keyword_spec, tmp_path) -> None:
    spec = keyword_spec(keyword_task, tmp_path / "run", epochs=1, keep_epoch="last", select_fraction=0.2)
    with pytest.warns(UserWarning, match="--select-fraction 0.2 holds out labels that choose nothing"):
        finetune_search(spec, [1e-3])


# ---- 7. a search picks the rate on held-out training data, not on dev -----------------------
def test_a_search_holds_out_a_slice_by_default(keyword_task, keyword_spec, tmp_path) -> None:
    spec = keyword_spec(keyword_task, tmp_path / "run", epochs=1, max_train_examples=50)
    result = finetune_search(spec, [1e-3, 3e-3])
    assert result["selected_by"] == "select_accuracy"
    assert result["select_examples"] == round(SEARCH_SELECT_FRACTION * 50) and result["train_examples"] == 45
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert config["finetune"]["select_fraction"] == SEARCH_SELECT_FRACTION
    # asked for explicitly, dev picks, with a warning; one rate keeps picking its epoch on dev
    with pytest.warns(UserWarning, match="dev set picks among 2 fine-tunings"):
        explicit = finetune_search(dataclasses.replace(spec, out=tmp_path / "dev", select_fraction=0.0), [1e-3, 3e-3])
    assert explicit["selected_by"] == "accuracy" and explicit["select_examples"] == 0
    single = finetune_search(dataclasses.replace(spec, out=tmp_path / "one"), [1e-3])
    assert single["select_examples"] == 0 and single["train_examples"] == 50


def test_a_search_over_head_epochs_tries_each_with_each_rate(keyword_task, keyword_spec, tmp_path) -> None:
    spec = keyword_spec(keyword_task, tmp_path / "run", epochs=1, max_train_examples=50)
    result = finetune_search(spec, [1e-3, 3e-3], [0, 2])
    runs = sorted(p.name for p in (tmp_path / "run" / "search").iterdir())
    assert runs == ["lr-0.001-head-0", "lr-0.001-head-2", "lr-0.003-head-0", "lr-0.003-head-2"]
    assert [(t["lr"], t["head_epochs"]) for t in result["search"]] == [(1e-3, 0), (3e-3, 0), (1e-3, 2), (3e-3, 2)]
    best = max(result["search"], key=lambda t: t["select_accuracy"])  # the first of equal scores wins
    assert (result["lr"], result["head_epochs"]) == (best["lr"], best["head_epochs"])
    assert result["select_examples"] == 5  # a search holds out a slice, here of runs, not rates
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert config["finetune"]["head_epochs"] == best["head_epochs"] and config["finetune"]["lr"] == best["lr"]
    headed = (tmp_path / "run" / "search" / "lr-0.001-head-2" / "metrics.jsonl").read_text().splitlines()
    plain = (tmp_path / "run" / "search" / "lr-0.001-head-0" / "metrics.jsonl").read_text().splitlines()
    assert '"phase": "head"' in headed[0] and all('"phase"' not in line for line in plain)
    # one rate, one head count: a single fine-tuning with that count, no search directory
    single = finetune_search(dataclasses.replace(spec, out=tmp_path / "one"), [1e-3], [2])
    assert "search" not in single and not (tmp_path / "one" / "search").exists()
    assert yaml.safe_load((tmp_path / "one" / "config.yaml").read_text())["finetune"]["head_epochs"] == 2


# ---- 8 and 9. evaluate's --out and the flags its errors name --------------------------------
@pytest.fixture(scope="module")
def finished_run(keyword_task, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("validation") / "run"
    finetune(run_module.FinetuneSpec(task="classify", init="scratch", tokenizer=keyword_task / "tok", out=out,
                                     train=str(keyword_task / "train.tsv"), dev=str(keyword_task / "dev.tsv"),
                                     text_fields=["sentence"], epochs=1, lr=1e-3, batch_size=16, max_length=16,
                                     max_train_examples=32, progress=False))
    return out


def _cli(args: list, capsys: pytest.CaptureFixture) -> tuple[int, str]:
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def test_evaluate_out_is_checked_before_evaluating(finished_run, keyword_task, tmp_path, monkeypatch, capsys) -> None:
    dev = keyword_task / "dev.tsv"
    deep = tmp_path / "nope" / "deeper" / "x.json"
    assert evaluate(finished_run, str(dev), deep)["examples"] == 60
    assert json.loads(deep.read_text())["examples"] == 60
    deep.write_text("{}")  # an existing file (a run's own eval.json, say) is replaced only when asked
    assert evaluate(finished_run, str(dev), deep, overwrite=True)["examples"] == 60
    assert json.loads(deep.read_text())["examples"] == 60
    (tmp_path / "existing").mkdir()
    (tmp_path / "afile").write_text("x")
    monkeypatch.setattr(run_module, "evaluate_items", lambda *a: pytest.fail("evaluated before checking --out"))
    for out, match in ((tmp_path / "existing", "--out is a directory"), (tmp_path / "afile" / "x.json", "is a file"),
                       (deep, "--out already exists.*--overwrite")):
        code, err = _cli(["evaluate", "--run", finished_run, "--data", dev, "--out", out], capsys)
        assert code == 2 and re.search(match, err) and "Traceback" not in err
    # a failed evaluation leaves no folders behind
    code, err = _cli(["evaluate", "--run", finished_run, "--data", tmp_path / "missing.tsv",
                      "--out", tmp_path / "new" / "m.json"], capsys)
    assert code == 2 and not (tmp_path / "new").exists()


def test_evaluate_errors_name_evaluates_flags(finished_run, tmp_path, capsys) -> None:
    code, err = _cli(["evaluate", "--run", tmp_path / "nonexist", "--data", "x.tsv"], capsys)
    assert code == 2 and "point --run at" in err and "--init" not in err
    scores = tmp_path / "scores.tsv"
    scores.write_text("sentence\tscore\nriver great\t1.0\n")
    code, err = _cli(["evaluate", "--run", finished_run, "--data", scores], capsys)
    assert code == 2 and "field 'label' not found" in err
    assert "--label-field" not in err and "label field 'label'" in err and "sentence, score" in err
    code, err = _cli(["finetune", "--task", "classify", "--init", tmp_path / "nonexist", "--train", scores,
                      "--out", tmp_path / "ft"], capsys)
    assert code == 2 and "point --init at" in err  # finetune still names its own flag


@pytest.mark.parametrize(("damage", "match"), [
    (lambda text: text + "\n  : [unclosed", "invalid YAML"),
    (lambda text: "", "no kind"),
    (lambda text: text.replace("task:", "lost_task:"), "KeyError"),
    (lambda text: text.replace("task:\n", "task:\n  colour: red\n", 1), "TypeError"),
])
def test_a_damaged_run_config_is_one_line_not_a_traceback(finished_run, keyword_task, tmp_path, capsys,
                                                           damage, match) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "config.yaml").write_text(damage((finished_run / "config.yaml").read_text()))
    code, err = _cli(["evaluate", "--run", run, "--data", keyword_task / "dev.tsv"], capsys)
    assert code == 2 and match in err and "config.yaml" in err and "Traceback" not in err
