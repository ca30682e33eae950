"""Labelled-data readers and label budgets."""

from __future__ import annotations

from collections import Counter

import pytest

from ptmkit.errors import UserError
from ptmkit.finetuning.data import glue_files, glue_spec, label_budget, read_records


def test_tsv_reads_bare_quotes_and_strips_bom(tmp_path) -> None:
    path = tmp_path / "train.tsv"
    path.write_bytes('\ufeffsentence\tlabel\nhe said "hi\t1\nok " then\t0\n'.encode())
    records = read_records(path)
    assert records == [{"sentence": 'he said "hi', "label": "1"}, {"sentence": 'ok " then', "label": "0"}]


def test_headerless_tsv_with_columns(tmp_path) -> None:
    path = tmp_path / "cola.tsv"
    path.write_text("gj04\t1\t\tGood sentence.\ngj04\t0\t*\tBad sentence.")  # no trailing newline
    records = read_records(path, columns=glue_spec("cola").columns)
    assert [r["label"] for r in records] == ["1", "0"] and records[1]["sentence"] == "Bad sentence."


def test_a_row_wider_than_its_header_is_refused_not_relabelled(tmp_path) -> None:
    """A tab inside the text used to make the label column read a piece of the text (a new class)."""
    tsv = tmp_path / "t.tsv"
    tsv.write_text("sentence\tlabel\ngood film\tpos\nbad\tmovie\tneg\nfine\tpos\t\n")
    with pytest.raises(UserError, match=r"row has 3 fields, the header 2 \(.*t.tsv:3\): replace the tab"):
        read_records(tsv)
    csv_file = tmp_path / "t.csv"
    csv_file.write_text('text,label\n"a, quoted",pos\nfine,pos,\n')  # a trailing empty field is no text
    assert [r["label"] for r in read_records(csv_file)] == ["pos", "pos"]
    csv_file.write_text("text,label\nbad, movie,neg\n")
    with pytest.raises(UserError, match="double quotes"):
        read_records(csv_file)


def test_jsonl_gz_and_errors(tmp_path) -> None:
    import gzip
    path = tmp_path / "d.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write('{"text": "a", "label": "x"}\n\n{"text": "b", "label": "y"}\n')
    assert [r["text"] for r in read_records(path)] == ["a", "b"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a"}\n{oops\n')
    with pytest.raises(UserError, match="bad.jsonl:2"):
        read_records(bad)
    empty = tmp_path / "e.tsv"
    empty.write_text("")
    with pytest.raises(UserError, match="no examples"):
        read_records(empty)


def test_a_json_array_of_objects_reads_like_json_lines(tmp_path) -> None:
    import gzip
    path = tmp_path / "d.json.gz"
    with gzip.open(path, "wt", encoding="utf-8-sig") as f:  # a byte-order mark, as some exporters write
        f.write('[{"text": "a", "label": 1, "meta": {"lang": "en"}},\n {"text": "b", "label": 0}]')
    records = read_records(path)
    assert [(r["text"], r["label"]) for r in records] == [("a", 1), ("b", 0)]
    assert records[0]["meta.lang"] == "en" and records[1].line == 2
    for text, match in (('[{"text": "a"},\n {oops}]', r"invalid JSON .*bad.json:2"),
                        ('[["a", 1]]', "must hold objects")):
        (tmp_path / "bad.json").write_text(text)
        with pytest.raises(UserError, match=match):
            read_records(tmp_path / "bad.json")


def test_budget_is_stratified_deterministic_and_complete() -> None:
    labels = ["a"] * 700 + ["b"] * 250 + ["c"] * 50
    pick = label_budget(labels, 100, seed=3)
    assert len(pick) == len(set(pick.tolist())) == 100
    assert Counter(labels[i] for i in pick) == {"a": 70, "b": 25, "c": 5}
    assert (label_budget(labels, 100, seed=3) == pick).all()
    assert not (label_budget(labels, 100, seed=4) == pick).all()
    assert len(label_budget(labels, 5000, seed=0)) == 1000


def test_a_held_out_slice_never_takes_a_class_s_last_example() -> None:
    """A dev or selection slice used to take the one example of a class seen once, which then
    left training altogether; a training budget still keeps every class."""
    labels = ["a"] * 95 + ["b"] + ["c"] * 4
    for seed in range(20):
        held = label_budget(labels, 10, seed, held_out=True)
        assert len(held) == 10 and 95 not in held.tolist()
        assert Counter(labels[i] for i in held)["c"] >= 1
    assert 95 in label_budget(labels, 10, 0).tolist()
    assert len(label_budget(["a", "b", "b"], 2, 0, held_out=True)) == 1  # only one can go


def test_budget_keeps_rare_classes_and_exact_size() -> None:
    labels = ["a"] * 990 + ["b"] * 7 + ["c"] * 3
    for n in (3, 10, 37):
        pick = label_budget(labels, n, seed=0)
        assert len(pick) == n
        assert set(labels[i] for i in pick) == {"a", "b", "c"}


def test_glue_files_find_the_official_folder(tmp_path) -> None:
    folder = tmp_path / "SST-2"
    folder.mkdir()
    (folder / "train.tsv").write_text("sentence\tlabel\nx\t1\n")
    (folder / "dev.tsv").write_text("sentence\tlabel\nx\t1\n")
    train, devs = glue_files("sst2", tmp_path)
    assert train == folder / "train.tsv" and devs == [folder / "dev.tsv"]
    mnli = tmp_path / "MNLI"
    mnli.mkdir()
    (mnli / "train.tsv").write_text("x\n")
    with pytest.raises(UserError, match="dev_matched"):
        glue_files("mnli", tmp_path)
    with pytest.raises(UserError, match="unknown GLUE task"):
        glue_spec("sst3")


def test_fasttext_lines(tmp_path) -> None:
    path = tmp_path / "polarity.cor"
    path.write_text("__label__neg dull , silly .\n__label__pos  . . . a ride\n")
    assert read_records(path) == [{"label": "neg", "text": "dull , silly ."}, {"label": "pos", "text": ". . . a ride"}]
    other = tmp_path / "x.txt"
    other.write_text("plain text\n")
    with pytest.raises(UserError, match="unsupported data format"):
        read_records(other)
