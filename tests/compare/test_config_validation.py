"""compare's config validation: every bad value is one UserError naming the file and the key,
before anything is trained; relative paths (model and recipe files included) start at the config."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest
import yaml

from ptmkit.checks import FINETUNE_VALUES, TOKENIZER_VALUES
from ptmkit.compare.config import PRETRAIN_VALUES, load_compare_config, parse_compare_config
from ptmkit.compare.runner import Compare
from ptmkit.data.tokenizer import train_tokenizer
from ptmkit.errors import UserError
from ptmkit.finetuning.run import FinetuneSpec
from ptmkit.recipes import FINETUNE_KEYS as RECIPE_FINETUNE_KEYS
from ptmkit.train.loop import TrainConfig


@pytest.fixture
def base(tmp_path) -> Path:
    """A config directory: a corpus and two task files that would both be named `train`."""
    (tmp_path / "corpus.txt").write_text("Some general text.\n\nMore of it.\n")
    for part in ("a", "b"):
        (tmp_path / part).mkdir()
        (tmp_path / part / "train.tsv").write_text("text\tlabel\ngood\t1\nbad\t0\n")
    return tmp_path


def config(**extra) -> dict:
    """A valid config (paths relative to the config directory) with `extra` keys replaced."""
    values = {"corpus": ["corpus.txt"], "task": {"type": "classify", "train": "a/train.tsv"}, **extra}
    return {k: v for k, v in values.items() if v is not DROP}


DROP = object()
"""`config(task=DROP)`: leave the key out."""
TASK = {"type": "classify", "train": "a/train.tsv"}


@pytest.mark.parametrize("patch, message", [
    # repeated entries would run the same cells twice and the report would merge them as seeds
    ({"task": DROP, "tasks": [TASK, {"type": "classify", "train": "b/train.tsv"}]},
     r"two tasks are named 'train' \(cmp.yaml: tasks\[1\].name\): give each task its own `name:`"),
    ({"seeds": [0, 1, 0]}, r"0 is listed twice \(cmp.yaml: seeds\)"),
    ({"pretrain_seeds": [1, 1]}, r"1 is listed twice \(cmp.yaml: pretrain_seeds\)"),
    ({"label_budgets": [10, 10]}, r"10 is listed twice \(cmp.yaml: label_budgets\)"),
    ({"label_budgets": ["full", "all"]}, r"full is listed twice \(cmp.yaml: label_budgets\)"),
    ({"task": {**TASK, "label_budgets": [5, 5]}}, r"listed twice \(cmp.yaml: tasks\[0\].label_budgets\)"),
    ({"objectives": ["mlm", "clm", "mlm"]}, r"'mlm' is listed twice \(cmp.yaml: objectives\)"),
    # a task name is a directory and a file-name component
    ({"task": {**TASK, "name": "x/y"}}, r"task name 'x/y' is not a plain name \(cmp.yaml: tasks\[0\].name\)"),
    ({"task": {**TASK, "name": "x\\y"}}, r"not a plain name \(cmp.yaml: tasks\[0\].name\)"),
    ({"task": {**TASK, "name": "/abs"}}, r"not a plain name \(cmp.yaml: tasks\[0\].name\)"),
    ({"task": {**TASK, "name": "."}}, r"not a plain name \(cmp.yaml: tasks\[0\].name\)"),
    ({"task": {**TASK, "name": ".."}}, r"not a plain name \(cmp.yaml: tasks\[0\].name\)"),
    ({"task": {**TASK, "name": ["x"]}}, r"cmp.yaml: tasks\[0\].name"),
    # wrong types and ranges, top level
    ({"objectives": None}, r"objectives must be a list, not None \(cmp.yaml: objectives\)"),
    ({"objectives": [["mlm"]]}, r"unknown objective \['mlm'\] \(cmp.yaml: objectives\)"),
    ({"objective_options": [1]}, r"must be a mapping \(cmp.yaml: objective_options\)"),
    ({"objective_options": {"mlm": 5}}, r"must be a mapping \(cmp.yaml: objective_options.mlm\)"),
    ({"objective_options": {"nope": {}}}, r"unknown objective 'nope' \(cmp.yaml: objective_options.nope\)"),
    ({"objective_options": {"mlm": {"maskprob": 0.1}}}, r"unknown option\(s\) maskprob.*\(cmp.yaml: objective_options.mlm\)"),
    ({"objective_options": {"mpnet": {"pred_ratio": 2}}}, r"\(cmp.yaml: objective_options.mpnet.pred_ratio\)"),
    ({"seeds": [-1]}, r"seeds must be a list of integers >= 0 \(cmp.yaml: seeds\)"),
    ({"seeds": [True]}, r"\(cmp.yaml: seeds\)"),
    ({"label_budgets": [True]}, r"invalid label budget True \(cmp.yaml: label_budgets\)"),
    ({"text_field": 5}, r"\(cmp.yaml: text_field\)"),
    ({"segment": ["jieba"]}, r"unknown word segmenter \['jieba'\] \(cmp.yaml: segment\)"),
    ({"corpus": []}, r"empty corpus \(cmp.yaml: corpus\)"),
    ({"task": DROP, "tasks": {"a": TASK}}, r"tasks must be a list \(cmp.yaml: tasks\)"),
    ({"model": "huge"}, r"unknown model 'huge' \(cmp.yaml: model\)"),
    ({"model": ["mini"]}, r"unknown model \['mini'\] \(cmp.yaml: model\)"),
    ({"model": "missing.yaml"}, r"path not found \(cmp.yaml: model: missing.yaml\)"),
    ({"model": {"size": "tiny", "hidden": 10, "heads": 3}}, r"not a multiple of heads=3 \(cmp.yaml: model\)"),
    ({"model": {"size": "tiny", "hiden": 64}}, r"unknown model field\(s\) hiden \(cmp.yaml: model\)"),
    ({"model": {"size": "tiny", "hidden": "64"}}, r"invalid hidden='64' \(cmp.yaml: model.hidden\)"),
    ({"recipe": "nope"}, r"unknown recipe 'nope' \(cmp.yaml: recipe\)"),
    ({"recipe": "missing.yaml"}, r"path not found \(cmp.yaml: recipe: missing.yaml\)"),
    # pretrain / domain_pretrain: what TrainConfig gets
    ({"pretrain": {"steps": "abc"}}, r"not a whole number >= 1: 'abc' \(cmp.yaml: pretrain.steps\)"),
    ({"pretrain": {"steps": 0}}, r"\(cmp.yaml: pretrain.steps\)"),
    ({"pretrain": {"minutes": "10"}}, r"not a number > 0: '10' \(cmp.yaml: pretrain.minutes\)"),
    ({"pretrain": {"minutes": 0}}, r"\(cmp.yaml: pretrain.minutes\)"),
    ({"pretrain": {"tokens": 1.5}}, r"\(cmp.yaml: pretrain.tokens\)"),
    ({"pretrain": {"seq_len": "x"}}, r"\(cmp.yaml: pretrain.seq_len\)"),
    ({"pretrain": {"batch_size": "x"}}, r"\(cmp.yaml: pretrain.batch_size\)"),
    ({"pretrain": {"lr": "abc"}}, r"\(cmp.yaml: pretrain.lr\)"),
    ({"pretrain": {"lr": -1e-4}}, r"\(cmp.yaml: pretrain.lr\)"),
    ({"pretrain": {"warmup": 1.5}}, r"\(cmp.yaml: pretrain.warmup\)"),
    ({"pretrain": {"schedule": "step"}}, r"unknown value 'step' \(cmp.yaml: pretrain.schedule\)"),
    ({"pretrain": {"precision": "fp16"}}, r"\(cmp.yaml: pretrain.precision\)"),
    ({"pretrain": {"weight_decay": "lots"}}, r"\(cmp.yaml: pretrain.weight_decay\)"),
    ({"pretrain": {"grad_accum": 0}}, r"\(cmp.yaml: pretrain.grad_accum\)"),
    ({"pretrain": {"workers": -1}}, r"\(cmp.yaml: pretrain.workers\)"),
    ({"pretrain": None}, r"must be a mapping \(cmp.yaml: pretrain\)"),
    ({"domain_pretrain": {"steps": "x"}}, r"\(cmp.yaml: domain_pretrain.steps\)"),
    # task entries
    ({"task": {**TASK, "dev_fraction": "half"}}, r"\(cmp.yaml: tasks\[0\].dev_fraction\)"),
    ({"task": {**TASK, "dev_fraction": 1}}, r"in \(0, 1\): 1 \(cmp.yaml: tasks\[0\].dev_fraction\)"),
    ({"task": {**TASK, "cv_folds": "x"}}, r"\(cmp.yaml: tasks\[0\].cv_folds\)"),
    ({"task": {**TASK, "cv_folds": -2}}, r"\(cmp.yaml: tasks\[0\].cv_folds\)"),
    ({"task": {**TASK, "max_length": "x"}}, r"\(cmp.yaml: tasks\[0\].max_length\)"),
    ({"task": {**TASK, "max_length": 0}}, r"\(cmp.yaml: tasks\[0\].max_length\)"),
    ({"task": {**TASK, "text_fields": 5}}, r"\(cmp.yaml: tasks\[0\].text_fields\)"),
    ({"task": {**TASK, "text_fields": []}}, r"\(cmp.yaml: tasks\[0\].text_fields\)"),
    ({"task": {**TASK, "label_field": ["label"]}}, r"\(cmp.yaml: tasks\[0\].label_field\)"),
    ({"task": {**TASK, "negative_label": None}}, r"\(cmp.yaml: tasks\[0\].negative_label\)"),
    ({"task": {"type": "glue:nope", "data_dir": "."}}, r"unknown GLUE task 'nope' \(cmp.yaml: tasks\[0\].type\)"),
    ({"task": {"type": "glue:sst2", "data_dir": ".", "dev": "x.tsv"}}, r"glue:sst2 reads .* \(cmp.yaml: tasks\[0\].dev\)"),
    ({"task": {"type": "glue:sst2", "data_dir": ".", "text_fields": ["review"]}},
     r"its GLUE folder \(cmp.yaml: tasks\[0\].text_fields\): drop `text_fields`"),
    # finetune: what FinetuneSpec gets
    ({"finetune": {"lr": "abc"}}, r"not a positive learning rate: 'abc' \(cmp.yaml: finetune.lr\)"),
    ({"finetune": {"lr": [1e-4, 0]}}, r"not a positive learning rate: 0 \(cmp.yaml: finetune.lr\)"),
    ({"finetune": {"lr": []}}, r"\(cmp.yaml: finetune.lr\)"),
    ({"finetune": {"scratch_lr": None}}, r"\(cmp.yaml: finetune.scratch_lr\)"),
    ({"finetune": {"epochs": "x"}}, r"\(cmp.yaml: finetune.epochs\)"),
    ({"finetune": {"epochs": "2"}}, r"not a whole number >= 1: '2' \(cmp.yaml: finetune.epochs\)"),
    ({"finetune": {"epochs": 2.0}}, r"\(cmp.yaml: finetune.epochs\)"),
    ({"finetune": {"pooling": "bogus"}}, r"unknown value 'bogus' \(cmp.yaml: finetune.pooling\): use one of: auto"),
    ({"finetune": {"keep_epoch": "first"}}, r"unknown value 'first' \(cmp.yaml: finetune.keep_epoch\): use one of: best, last"),
    ({"finetune": {"batch_size": 0}}, r"\(cmp.yaml: finetune.batch_size\)"),
    ({"finetune": {"min_steps": -1}}, r"\(cmp.yaml: finetune.min_steps\)"),
    ({"finetune": {"patience": "x"}}, r"\(cmp.yaml: finetune.patience\)"),
    ({"finetune": {"warmup_ratio": 1.5}}, r"\(cmp.yaml: finetune.warmup_ratio\)"),
    ({"finetune": {"max_length": "x"}}, r"\(cmp.yaml: finetune.max_length\)"),
    ({"finetune": {"precision": "fp16"}}, r"\(cmp.yaml: finetune.precision\)"),
    ({"finetune": {"select_fraction": 1}}, r"\(cmp.yaml: finetune.select_fraction\)"),
    ({"finetune": {"layer_decay": 0}}, r"\(cmp.yaml: finetune.layer_decay\)"),
    ({"finetune": {"dropout": 1}}, r"in \[0, 1\).*\(cmp.yaml: finetune.dropout\)"),
    ({"finetune": {"weight_decay": "x"}}, r"\(cmp.yaml: finetune.weight_decay\)"),
    ({"finetune": {"freeze_embeddings": "yes"}}, r"not true or false: 'yes' \(cmp.yaml: finetune.freeze_embeddings\)"),
    ({"finetune": {"head_epochs": -1}}, r"\(cmp.yaml: finetune.head_epochs\)"),
    ({"finetune": {"head_epochs": []}}, r"an empty list \(cmp.yaml: finetune.head_epochs\)"),
    ({"finetune": {"head_epochs": [0, 2.5]}}, r"not a whole number >= 0: 2.5 \(cmp.yaml: finetune.head_epochs\)"),
    ({"finetune": {"head_lr": 0}}, r"> 0.*\(cmp.yaml: finetune.head_lr\)"),
    # tokenizer: the keyword arguments train_tokenizer takes, or a trained tokenizer's directory
    ({"tokenizer": {"vocab": 8000}}, r"unknown key\(s\) vocab \(cmp.yaml: tokenizer\): use only: kind, "),
    ({"tokenizer": 5}, r"not a tokenizer: 5 \(cmp.yaml: tokenizer\)"),
    ({"tokenizer": {"kind": "sentencepiece"}}, r"\(cmp.yaml: tokenizer.kind\)"),
    ({"tokenizer": {"vocab_size": "8000"}}, r"\(cmp.yaml: tokenizer.vocab_size\)"),
    ({"tokenizer": {"kind": "bpe", "vocab_size": 50}}, r"too small for a bpe tokenizer \(cmp.yaml: tokenizer.vocab_size\)"),
    ({"tokenizer": {"lowercase": "no"}}, r"\(cmp.yaml: tokenizer.lowercase\)"),
    ({"tokenizer": {"min_frequency": 0}}, r"\(cmp.yaml: tokenizer.min_frequency\)"),
])
def test_every_bad_value_is_one_user_error_naming_the_key(base, patch, message) -> None:
    with pytest.raises(UserError, match=message):
        parse_compare_config(config(**patch), "cmp.yaml", base)


def test_a_recipes_own_settings_are_checked_naming_the_recipe_file(base) -> None:
    recipe = {"name": "quick", "minutes": 1, "tokenizer": {"kind": "wordpiece", "vocab_size": 600},
              "stages": [{"objective": "mlm"}], "finetune": {"pooling": "bogus"}}
    (base / "quick.yaml").write_text(yaml.safe_dump(recipe))
    with pytest.raises(UserError, match=r"quick.yaml: finetune.pooling"):
        parse_compare_config(config(recipe="quick.yaml"), "cmp.yaml", base)


def test_distinct_names_for_same_named_files_and_numbers_written_5e_4_are_accepted(base) -> None:
    # YAML 1.1 reads `5e-4` (no dot) as text: still the number it spells, as `finetune.lr` always was
    text = """
corpus: [corpus.txt]
tasks:
  - {type: classify, name: first, train: a/train.tsv, dev_fraction: 2e-1}
  - {type: classify, name: second, train: b/train.tsv, text_fields: text}
pretrain: {steps: 3, lr: 5e-4, weight_decay: 1e-2, batch_size: 4, seq_len: 16}
domain_pretrain: {minutes: 1e-1}
finetune: {lr: [1e-4, 5.0e-4], scratch_lr: 1e-3, warmup_ratio: 1e-1, epochs: 2, pooling: mean}
tokenizer: {kind: wordpiece, vocab_size: 300, lowercase: true, min_frequency: 1}
objective_options: {mlm: {mask_prob: 2e-1}}
label_budgets: [10, full]
seeds: [0, 1]
pretrain_seeds: [0, 1]
"""
    (base / "cmp.yaml").write_text(text)
    cfg = load_compare_config(base / "cmp.yaml")
    assert [t.name for t in cfg.tasks] == ["first", "second"] and cfg.tasks[1].text_fields == ["text"]
    assert cfg.tasks[0].dev_fraction == 0.2
    assert cfg.pretrain == {"steps": 3, "lr": 5e-4, "weight_decay": 1e-2, "batch_size": 4, "seq_len": 16}
    assert cfg.domain_pretrain == {"minutes": 0.1}
    assert cfg.finetune["lr"] == ["1e-4", 5e-4]  # as written: the runner's as_rates reads both
    assert cfg.finetune["warmup_ratio"] == 0.1 and cfg.finetune["scratch_lr"] == "1e-3"
    train = Compare(cfg, base / "out", progress=False).train_config(cfg.pretrain, seed=0)
    assert train.lr == 5e-4 and train.steps == 3  # TrainConfig gets numbers, not '5e-4'


def test_valid_values_reach_the_runner_unchanged(base) -> None:
    """Cache keys hash the pretrain and finetune settings: a valid config must keep its values
    (an int stays an int), or every earlier compare would train again."""
    pretrain = {"minutes": 10, "batch_size": 32, "seq_len": 128, "precision": "bf16"}
    finetune = {"epochs": 5, "min_steps": 150, "lr": [2.0e-4, 5.0e-4], "batch_size": 32, "select_fraction": 0.1}
    cfg = parse_compare_config(config(pretrain=pretrain, finetune=finetune), "cmp.yaml", base)
    assert cfg.pretrain == pretrain and type(cfg.pretrain["minutes"]) is int
    assert cfg.finetune == finetune


def test_the_checked_keys_are_those_the_runner_passes_on() -> None:
    trainer = set(inspect.signature(train_tokenizer).parameters) - {"texts", "show_progress"}
    assert set(TOKENIZER_VALUES) == trainer  # an unknown tokenizer key fails here, not after the corpus is read
    assert set(PRETRAIN_VALUES) - {"steps", "minutes", "tokens"} <= {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(FINETUNE_VALUES) - {"scratch_lr"} <= {f.name for f in dataclasses.fields(FinetuneSpec)}
    # a recipe carries the same fine-tuning settings a compare config does (path A's rate aside)
    assert set(FINETUNE_VALUES) - {"scratch_lr"} == RECIPE_FINETUNE_KEYS


def test_a_config_that_is_not_utf8_is_a_user_error(base) -> None:
    path = base / "cmp.yaml"
    path.write_bytes(b"corpus: [corpus.txt]\n# caf\xe9 (Latin-1)\n")
    with pytest.raises(UserError, match=r"not UTF-8 text \(byte 26\) \(.*cmp.yaml\): save the file as UTF-8"):
        load_compare_config(path)


def test_a_utf8_config_reads_the_same_whatever_the_locale(base) -> None:
    """Under an ASCII locale (LC_ALL=C without UTF-8 mode) the config is still read as UTF-8."""
    import os
    import subprocess
    import sys
    (base / "cmp.yaml").write_text(yaml.safe_dump(config(task={**TASK, "name": "café"}), allow_unicode=True),
                                   encoding="utf-8")
    env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    code = ("import sys; from ptmkit.compare.config import load_compare_config; "
            "print(ascii(load_compare_config(sys.argv[1]).tasks[0].name))")
    done = subprocess.run([sys.executable, "-c", code, str(base / "cmp.yaml")], env=env, capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ascii("café")


def test_model_and_recipe_files_resolve_from_the_config_directory(base, monkeypatch) -> None:
    (base / "m.yaml").write_text("size: tiny\nhidden: 64\n")
    recipe = {"name": "quick", "minutes": 1, "model": "tiny", "tokenizer": {"kind": "wordpiece", "vocab_size": 600},
              "stages": [{"objective": "mlm"}], "finetune": {"epochs": 1}}
    (base / "quick.yaml").write_text(yaml.safe_dump(recipe))
    (base / "cmp.yaml").write_text(yaml.safe_dump(config(model="m.yaml")))
    (base / "recipe.yaml").write_text(yaml.safe_dump(config(recipe="quick.yaml")))
    elsewhere = base / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # compare run from another directory: the files are still found
    assert load_compare_config(base / "cmp.yaml").model == str(base / "m.yaml")
    assert load_compare_config(base / "recipe.yaml").recipe.name == "quick"
    # built-in names are not files
    assert parse_compare_config(config(model="mini"), "cmp.yaml", base).model == "mini"
    assert parse_compare_config(config(recipe="budget"), "cmp.yaml", base).recipe.name == "budget"


def test_compare_stops_with_one_line_and_exit_2_before_training(base, capsys) -> None:
    from ptmkit.cli import main
    (base / "cmp.yaml").write_text(yaml.safe_dump(config(finetune={"pooling": "bogus"})))
    out = base / "out"
    assert main(["compare", "--config", str(base / "cmp.yaml"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"ptmkit: error: unknown value 'bogus' ({base / 'cmp.yaml'}: finetune.pooling): "
                   "use one of: auto, first, last, mean"]
    assert not out.exists()  # nothing trained, no tokenizer, no prepared data


def test_datasets_are_corpora_and_tasks_named_after_their_dataset_dict(base) -> None:
    import datasets
    datasets.disable_progress_bars()
    rows = datasets.Dataset.from_dict({"text": ["good", "bad"], "label": [1, 0]})
    datasets.DatasetDict({"train": rows, "validation": rows}).save_to_disk(str(base / "reviews"))
    rows.to_parquet(str(base / "corpus.parquet"))
    cfg = parse_compare_config(config(corpus=["corpus.parquet", "reviews/train"],
                                      task={"type": "classify", "train": "reviews/train",
                                            "dev": "reviews/validation"}), "cmp.yaml", base)
    assert cfg.tasks[0].name == "reviews"
    with pytest.raises(UserError, match=r"DatasetDict holds several splits \(cmp.yaml: corpus: .*reviews\)"):
        parse_compare_config(config(corpus=["reviews"]), "cmp.yaml", base)


@pytest.mark.parametrize(("task", "match"), [
    ({"text_fields": ["text"]}, "task reviews: field 'text' not found .*use text_fields with one of: sentence, label"),
    ({"label_field": "lab"}, "task reviews: field 'lab' not found .*use label_field"),
    ({"train": "missing.tsv"}, "path not found"),
    ({"type": "seq2seq", "source_field": "sentence", "target_field": "summary"},
     "task reviews: field 'summary' not found .*use target_field with one of"),
])
def test_a_task_whose_file_or_fields_are_wrong_fails_before_anything_trains(tmp_path, task, match) -> None:
    """It used to pass --dry-run, then fail every cell after the tokenizer and the pre-trainings.
    The fix names the task's keys, not finetune's flags."""
    (tmp_path / "reviews.tsv").write_text("sentence\tlabel\nfine film\t1\ndull film\t0\n")
    (tmp_path / "text.txt").write_text("some general text\n")
    config = {"corpus": ["text.txt"], "objectives": ["mlm"], "pretrain": {"steps": 2},
              "task": {"type": "classify", "train": "reviews.tsv", "text_fields": ["sentence"], **task}}
    (tmp_path / "cmp.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(UserError, match=match):
        load_compare_config(tmp_path / "cmp.yaml")
