"""Bad task input is refused with one line naming the file and line (or the flag), before training:
regression targets, classification labels, rows missing a field, max lengths too small for a
task's framing; plus `generate` from a long-seq_len decoder-only run and CJK text metrics."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ptmkit.cli import main
from ptmkit.data.tokenizer import Tokenizer
from ptmkit.errors import UserError
from ptmkit.finetuning.data import read_records
from ptmkit.finetuning.model import Backbone, load_backbone
from ptmkit.finetuning.relation import Relation
from ptmkit.finetuning.run import finetune
from ptmkit.finetuning.seq2seq_task import CJKRougeTokenizer, Seq2Seq, text_metrics
from ptmkit.finetuning.tagging import IGNORE, Tag
from ptmkit.finetuning.tasks import Classify, Regress, TaskSpec, _truncate
from ptmkit.model.config import resolve_model_config
from ptmkit.objectives import get_objective
from ptmkit.objectives.base import Vocab
from ptmkit.train.checkpoint import atomic_save_model


def task_of(cls: type, tokenizer: Tokenizer | None = None, **spec) -> object:
    return cls(TaskSpec(name=cls.name, **spec), tokenizer, pooling="first", token_types=False)


def rows(path: Path) -> list[tuple[str, str]]:
    """(sentence, label) of a keyword_task TSV."""
    return [tuple(line.split("\t")) for line in path.read_text().splitlines()[1:]]


def write_tsv(path: Path, header: str, lines: list[str]) -> Path:
    path.write_text("\n".join([header, *lines]) + "\n")
    return path


# ---- 1. regression targets -----------------------------------------------------------------
@pytest.mark.parametrize("bad", ["nan", "inf", "-inf", "", "high"])
def test_regression_rejects_non_finite_or_non_numeric_targets_by_line(tmp_path, bad: str) -> None:
    path = write_tsv(tmp_path / "r.tsv", "sentence\tscore", ["a b\t1.5", "c d\t2", f"e f\t{bad}", "g h\t3"])
    task = task_of(Regress, text_fields=["sentence"], label_field="score")
    with pytest.raises(UserError, match=rf"target '{bad}' is not a finite number \(.*r\.tsv:4: score\)"):
        task.read(str(path))  # reading is enough: the run stops before training


@pytest.mark.parametrize("value, message", [
    (None, r"field 'score' is null \(.*r\.jsonl:3\)"),
    ([1.0], r"target \[1\.0\] is not a finite number \(.*r\.jsonl:3: score\)"),
    ({"v": 1}, r"is not a finite number \(.*r\.jsonl:3: score\)")])
def test_regression_null_or_list_targets_are_user_errors(tmp_path, value, message: str) -> None:
    records = [{"sentence": "a", "score": 1.0}, {"sentence": "b", "score": value}]
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(records[0]) + "\n\n" + json.dumps(records[1]) + "\n")  # blank line 2
    task = task_of(Regress, text_fields=["sentence"], label_field="score")
    with pytest.raises(UserError, match=message):
        task.read(str(path))


def test_regression_metrics_are_zero_not_nan_when_undefined() -> None:
    task = task_of(Regress)
    assert task.metrics([1.0, 2.0, 3.0], [2.0, 2.0, 2.0]) == {"pearson": 0.0, "spearman": 0.0}  # constant dev
    assert task.metrics([1.0, math.nan, 3.0], [1.0, 2.0, 3.0]) == {"pearson": 0.0, "spearman": 0.0}
    assert task.metrics([1.0, math.inf, 3.0], [1.0, 2.0, 3.0]) == {"pearson": 0.0, "spearman": 0.0}
    assert task.metrics([1.0, 2.0, 4.0], [1.0, 2.0, 3.0])["spearman"] == pytest.approx(1.0)


def test_regression_with_constant_dev_targets_finishes(keyword_task, keyword_spec, tmp_path) -> None:
    """A NaN main metric never beat -inf, so no epoch was kept (KeyError 'state')."""
    lines = [f"{s}\t{1.0 if label == 'pos' else 0.0}" for s, label in rows(keyword_task / "train.tsv")]
    train = write_tsv(tmp_path / "train.tsv", "sentence\tscore", lines)
    constant = [f"{s}\t2.0" for s, _ in rows(keyword_task / "dev.tsv")]
    dev = write_tsv(tmp_path / "dev.tsv", "sentence\tscore", constant)
    result = finetune(keyword_spec(keyword_task, tmp_path / "out", task="regress", label_field="score",
                                   train=str(train), dev=str(dev), epochs=1))
    assert result["pearson"] == 0.0 and result["spearman"] == 0.0


# ---- 2. classification labels --------------------------------------------------------------
@pytest.mark.parametrize("value, message", [
    (None, r"field 'label' is null \(.*c\.jsonl:2\)"),
    (["pos"], r"label \['pos'\] is not a class name \(.*c\.jsonl:2: label\)"),
    ({"a": 1}, r"label \{'a': 1\} is not a class name")])
def test_classification_labels_must_be_scalars(tmp_path, value, message: str) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(json.dumps({"text": "a b", "label": v}) for v in ["neg", value, "pos"]) + "\n")
    with pytest.raises(UserError, match=message):
        task_of(Classify).read(str(path))


def test_a_single_training_class_is_refused(keyword_task, keyword_spec, tmp_path) -> None:
    with pytest.raises(UserError, match="classification needs at least 2 classes.*'pos'"):
        task_of(Classify).fit_labels([{"text": "a", "label": "pos"}, {"text": "b", "label": "pos"}])
    one = [f"{s}\tpos" for s, _ in rows(keyword_task / "train.tsv")]
    train = write_tsv(tmp_path / "one.tsv", "sentence\tlabel", one)
    with pytest.raises(UserError, match="at least 2 classes"):  # no --dev: the held-out split would hide it
        finetune(keyword_spec(keyword_task, tmp_path / "out", train=str(train), dev=None, epochs=1))
    assert not (tmp_path / "out").exists()


# ---- 3. every row has the fields ------------------------------------------------------------
def test_a_later_row_missing_a_field_is_named_by_line(keyword_task, keyword_spec, tmp_path) -> None:
    lines = (keyword_task / "train.tsv").read_text().splitlines()
    short = tmp_path / "train.tsv"
    short.write_text("\n".join(lines[:50] + ["river market school"] + lines[50:]) + "\n")  # line 51: no label
    with pytest.raises(UserError) as error:
        finetune(keyword_spec(keyword_task, tmp_path / "out", train=str(short), epochs=1))
    assert str(error.value) == (f"field 'label' missing ({short}:51): "
                                "give every example a 'label' value, or remove the line")
    assert not (tmp_path / "out").exists()

    records = [{"sentence": s, "label": label} for s, label in rows(keyword_task / "train.tsv")[:5]]
    del records[3]["sentence"]
    text = "\n".join(json.dumps(r) for r in records[:2]) + "\n\n" + "\n".join(json.dumps(r) for r in records[2:])
    (tmp_path / "t.jsonl").write_text(text + "\n")  # a blank line 3: record 4 is on line 5
    with pytest.raises(UserError, match=r"field 'sentence' missing \(.*t\.jsonl:5\)"):
        task_of(Classify, text_fields=["sentence"]).read(str(tmp_path / "t.jsonl"))
    # a field absent from the first row is a wrong name, as before
    with pytest.raises(UserError, match="field 'sentnce' not found.*--text-fields with one of: sentence, label"):
        task_of(Classify, text_fields=["sentnce"]).read(str(tmp_path / "t.jsonl"))


def test_records_remember_their_lines_and_stay_plain_dicts(tmp_path) -> None:
    path = write_tsv(tmp_path / "a.tsv", "text\tlabel", ["x\t1", "", "y\t2"])
    records = read_records(path)
    assert records == [{"text": "x", "label": "1"}, {"text": "y", "label": "2"}]
    assert [r.line for r in records] == [2, 4]


# ---- 4. max lengths too small for the framing -----------------------------------------------
@pytest.mark.parametrize("task, fields, max_length, need", [
    ("classify", ["sentence"], 2, 3), ("classify", ["sentence"], 1, 3), ("classify", ["sentence"], 0, 3),
    ("classify", ["sentence"], -5, 3), ("classify", ["sentence", "sentence"], 4, 5),
    ("regress", ["sentence"], 1, 3)])
def test_sequence_tasks_refuse_a_max_length_below_their_framing(keyword_task, keyword_spec, tmp_path,
                                                                 task: str, fields: list[str], max_length: int,
                                                                 need: int) -> None:
    spec = keyword_spec(keyword_task, tmp_path / "out", task=task, text_fields=fields, max_length=max_length,
                        label_field="label" if task == "classify" else "score", epochs=1)
    message = rf"max length {max_length} .* needs at least {need} tokens \(--max-length\)"
    with pytest.raises(UserError, match=message):
        finetune(spec)
    assert not (tmp_path / "out").exists()  # raised in Task.bind, before anything is read or written


def test_the_smallest_max_length_keeps_a_token_of_every_text(keyword_task) -> None:
    tokenizer = Tokenizer.load(keyword_task / "tok")
    pair = task_of(Classify, tokenizer, text_fields=["a", "b"], max_length=5)
    pair.bind(None)
    ids = pair.encode_texts([{"a": "river market school", "b": "garden winter"}])[0]["input_ids"]
    special = tokenizer.special
    assert len(ids) == 5 and ids[0] == special.cls and list(ids).count(special.sep) == 2
    assert _truncate([[1, 2], [3]], -4) == [[], []]  # a negative budget no longer pops from an empty list


def test_tagging_and_relation_refuse_lengths_that_leave_no_token(keyword_task) -> None:
    tokenizer = Tokenizer.load(keyword_task / "tok")
    with pytest.raises(UserError, match=r"max length 2 .*`\[CLS\] word \[SEP\]` needs at least 3.*--max-length 3"):
        task_of(Tag, tokenizer, max_length=2).bind(None)
    tag = task_of(Tag, tokenizer, max_length=3)
    tag.bind(None)
    item = tag.encode_words([["river", "market"]], [[1, 0]])[0]
    assert len(item["input_ids"]) == 3 and list(item["labels"]) == [IGNORE, 1, IGNORE]  # something to train on
    with pytest.raises(UserError, match=r"max length 3 .*needs at least 4 tokens \(--max-length\)"):
        task_of(Relation, tokenizer, max_length=3).bind(None)
    relation = task_of(Relation, tokenizer, max_length=4)
    relation.bind(None)
    text = "<< river >> " + "market " * 20 + "[[ school ]]"
    item = relation.encode_texts([{"text": text}])[0]
    assert len(item["input_ids"]) == 4 and (int(item["head_at"]), int(item["tail_at"])) == (1, 2)


def fake_pretrain_run(root: Path, objective: str, tokenizer: Path, seq_len: int, max_positions: int = 64) -> Path:
    """A `ptmkit pretrain` run directory with a freshly initialised tiny model."""
    tok = Tokenizer.load(tokenizer)
    obj = get_objective(objective)(Vocab.of(tok), seq_len)
    cfg = resolve_model_config("tiny", vocab_size=tok.vocab_size, layout=obj.layout,
                               encoder_decoder=obj.architecture == "encoder_decoder", max_positions=max_positions)
    torch.manual_seed(0)
    run = root / objective
    run.mkdir(parents=True)
    atomic_save_model(obj.build_model(cfg), run / "model.safetensors")
    tok.save(run / "tokenizer")
    config = {"kind": "pretrain", "objective": objective, "objective_options": dataclasses.asdict(obj.options),
              "model": cfg.to_dict(), "train": {"seq_len": seq_len}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    return run


def seq2seq_task(run: Path, **spec) -> tuple[Seq2Seq, Backbone]:
    backbone = load_backbone(str(run), max_length=16)
    task_spec = TaskSpec(name="seq2seq", **{"max_length": 16, "max_target_length": 16, **spec})
    return Seq2Seq(task_spec, backbone.tokenizer, backbone.pooling, token_types=False), backbone


@pytest.mark.parametrize("objective, spec, message", [
    ("bart", {"max_length": 2}, r"max length 2 .*`<s> source </s>` needs at least 3 tokens \(--max-length\)"),
    ("bart", {"max_target_length": 2}, r"max target length 2 .*`<s> target </s>` needs at least 3 .*target-length"),
    ("bart", {"max_target_length": 0}, r"max target length 0 .*--max-target-length 3 or more"),
    ("t5", {"max_target_length": 1}, r"`target </s>` needs at least 2 tokens \(--max-target-length\)"),
    ("clm", {"max_length": 1}, r"`</s> source \[SEP\]` needs at least 3 tokens \(--max-length\)"),
    ("clm", {"max_target_length": 1}, r"needs at least 2 tokens \(--max-target-length\)")])
def test_seq2seq_refuses_lengths_below_its_framing_when_bound(keyword_task, tmp_path, objective: str,
                                                              spec: dict, message: str) -> None:
    task, backbone = seq2seq_task(fake_pretrain_run(tmp_path, objective, keyword_task / "tok", 16), **spec)
    with pytest.raises(UserError, match=message):
        task.bind(backbone)


def test_seq2seq_room_never_turns_into_a_slice_from_the_end(keyword_task, tmp_path) -> None:
    for objective in ("bart", "clm"):
        task, backbone = seq2seq_task(fake_pretrain_run(tmp_path, objective, keyword_task / "tok", 16))
        task.bind(backbone)
        framing = task.source_ids([""])[0]
        task.spec.max_length = 1  # below the framing (bind refuses it; the encoder must not misbehave)
        assert task.source_ids(["river market school music garden"]) == [framing]
        task.spec.max_target_length = 1
        assert task._labels(["river market school"]) == [list(task.frame.labels([]))]


# ---- 5. generate from a decoder-only run with a long seq_len ---------------------------------
def run_cli(args: list) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue() + err.getvalue()


def test_generate_from_a_clm_run_whose_seq_len_plus_64_exceeds_its_positions(keyword_task, tmp_path) -> None:
    (tmp_path / "in.txt").write_text("river market\nschool\n")
    for objective in ("clm", "bart"):  # seq_len 48 + the unused default max_target_length 64 > 64
        run = fake_pretrain_run(tmp_path, objective, keyword_task / "tok", seq_len=48, max_positions=64)
        code, out = run_cli(["generate", "--run", run, "--input", tmp_path / "in.txt", "--max-length", "5"])
        assert code == 0 and len(out.splitlines()) == 2, out
    # what generate feeds is still checked, and fine-tuning still sizes source + target
    code, out = run_cli(["generate", "--run", tmp_path / "clm", "--input", tmp_path / "in.txt",
                         "--max-length", "100"])
    assert code == 2 and "positions" in out and len(out.splitlines()) == 1, out
    task, backbone = seq2seq_task(tmp_path / "clm", max_length=48, max_target_length=24)
    with pytest.raises(UserError, match="sequences of 72 tokens exceed the model's 64 positions"):
        task.bind(backbone)


# ---- 6. CJK text metrics ---------------------------------------------------------------------
def test_chinese_text_is_scored_by_character() -> None:
    same = text_metrics(["我喜欢这家酒店"], [["我喜欢这家酒店"]])
    assert same == pytest.approx({"rouge1": 1, "rouge2": 1, "rougeL": 1, "bleu": 1, "chrf": 1})
    partial = text_metrics(["我喜欢这家酒店"], [["我不喜欢这家饭店"]])
    assert 0 < partial["rouge1"] < 1 and 0 < partial["bleu"] < 1
    from rouge_score.tokenizers import DefaultTokenizer
    tokenizer = CJKRougeTokenizer(DefaultTokenizer(use_stemmer=True))
    tokens = tokenizer.tokenize("我喜欢Paris hotels，很好!")
    assert tokens == ["我", "喜", "欢", "pari", "hotel", "很", "好"]  # Latin words as rouge-score has them


def test_latin_text_metrics_are_unchanged() -> None:
    """Exactly what rouge-score's default tokenizer and sacrebleu's 13a gave before."""
    from rouge_score import rouge_scorer
    from sacrebleu.metrics import BLEU, CHRF
    predictions = ["The cats were sitting on the mats, happily!", "a dog ran in the park now", "Über die Brücke"]
    refs = [["the cat sat on the mat", "Cats sit on mats."], ["A dog runs in a park."],
            ["über die grüne Brücke"]]
    for lowercase in (False, True):
        result = text_metrics(predictions, refs, lowercase=lowercase)
        scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
        scores = [scorer.score_multi(r, p) for p, r in zip(predictions, refs)]
        streams = [[r[i] if i < len(r) else None for r in refs] for i in range(2)]
        expected = {k: float(np.mean([s[k].fmeasure for s in scores])) for k in ("rouge1", "rouge2", "rougeL")}
        expected["bleu"] = BLEU(lowercase=lowercase).corpus_score(predictions, streams).score / 100
        expected["chrf"] = CHRF(lowercase=lowercase).corpus_score(predictions, streams).score / 100
        assert result == expected and 0 < result["rougeL"] < 1 and 0 < result["bleu"] < 1
