"""Hugging Face datasets as corpora and task data: Parquet, Arrow and save_to_disk directories,
ClassLabel names, a DatasetDict refused with its splits, content digests."""

from __future__ import annotations

import hashlib

import datasets
import pyarrow as pa
import pyarrow.feather as feather
import pytest

from ptmkit.data import hf_datasets
from ptmkit.data.corpus import file_digests, list_corpus_files, read_documents, text_bytes
from ptmkit.errors import UserError
from ptmkit.finetuning.data import read_records

TEXTS = ["The first review. It was long.", "A second one!", "Third and last."]
FEATURES = datasets.Features({"text": datasets.Value("string"),
                              "label": datasets.ClassLabel(names=["negative", "positive"])})


@pytest.fixture(autouse=True)
def quiet() -> None:
    datasets.disable_progress_bars()


def reviews(n: int = 3) -> datasets.Dataset:
    return datasets.Dataset.from_dict({"text": (TEXTS * n)[:n], "label": [i % 2 for i in range(n)]},
                                      features=FEATURES)


@pytest.fixture
def saved(tmp_path):
    """The same three rows as a Parquet file, a save_to_disk directory, an Arrow cache file and an
    Arrow IPC (Feather) file, the last without `datasets` features."""
    reviews().to_parquet(str(tmp_path / "r.parquet"))
    reviews().save_to_disk(str(tmp_path / "saved"))
    arrow = next((tmp_path / "saved").glob("*.arrow"))
    feather.write_feather(pa.table({"text": TEXTS, "label": [0, 1, 0]}), str(tmp_path / "plain.arrow"))
    return {"parquet": tmp_path / "r.parquet", "dir": tmp_path / "saved", "cache": arrow,
            "feather": tmp_path / "plain.arrow"}


@pytest.mark.parametrize("kind", ["parquet", "dir", "cache", "feather"])
def test_every_format_reads_as_one_document_per_row(saved, kind) -> None:
    documents = list(read_documents([saved[kind]]))
    assert [" ".join(d.sentences) for d in documents] == TEXTS
    assert documents[0].sentences == ("The first review.", "It was long.")
    assert list_corpus_files([saved[kind]]) == [saved[kind]]


@pytest.mark.parametrize("kind", ["parquet", "dir", "cache"])
def test_class_label_ids_come_back_as_their_names(saved, kind) -> None:
    assert [r["label"] for r in read_records(saved[kind])] == ["negative", "positive", "negative"]
    assert read_records(saved[kind])[1].line == 2, "errors name the row"


def test_ids_without_class_names_stay_numbers(saved) -> None:
    assert [r["label"] for r in read_records(saved["feather"])] == [0, 1, 0]


def test_a_saved_dataset_inside_a_corpus_directory_is_one_source(saved, tmp_path) -> None:
    (tmp_path / "notes.txt").write_text("Plain text next to the datasets.\n")
    (tmp_path / "checkpoint").mkdir()  # a state.json alone does not make a dataset
    (tmp_path / "checkpoint" / "state.json").write_text("{}")
    files = list_corpus_files([tmp_path])
    assert tmp_path / "checkpoint" not in files and tmp_path / "checkpoint" / "state.json" in files
    assert saved["dir"] in files and saved["parquet"] in files and tmp_path / "notes.txt" in files
    assert not any(saved["dir"] in f.parents for f in files), "its arrow files are not read twice"


def test_a_dataset_dict_is_refused_naming_its_splits(tmp_path) -> None:
    datasets.DatasetDict({"train": reviews(), "test": reviews()}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(UserError, match=r"DatasetDict.*dd/train \(splits: train, test\)"):
        list_corpus_files([tmp_path / "dd"])
    with pytest.raises(UserError, match="DatasetDict"):
        read_records(tmp_path / "dd")
    assert hf_datasets.data_name(tmp_path / "dd" / "test") == "dd"
    assert [r["label"] for r in read_records(tmp_path / "dd" / "test")][:2] == ["negative", "positive"]


def test_a_missing_text_column_names_the_columns(saved) -> None:
    with pytest.raises(UserError, match=r"no column 'body'.*'text', 'label'.*--text-field"):
        list(read_documents([saved["parquet"]], text_field="body"))


def test_unreadable_dataset_files_are_the_users(tmp_path) -> None:
    for name in ("broken.parquet", "broken.arrow"):
        (tmp_path / name).write_text("not a dataset")
        with pytest.raises(UserError, match="cannot read the dataset"):
            list(read_documents([tmp_path / name]))


def test_digests_follow_the_content_and_sizes_the_text(saved, tmp_path) -> None:
    before = list(file_digests([saved["dir"], saved["parquet"]]))
    reviews(4).save_to_disk(str(tmp_path / "saved"))
    reviews(4).to_parquet(str(saved["parquet"]))
    after = list(file_digests([saved["dir"], saved["parquet"]]))
    assert before[0] != after[0] and before[1] != after[1]
    # a single file's digest is its bytes' SHA-256, as for text files (caches stay valid)
    assert after[1] == hashlib.sha256(saved["parquet"].read_bytes()).digest()
    assert text_bytes(saved["parquet"]) >= sum(map(len, TEXTS))
    assert text_bytes(saved["dir"]) >= sum(map(len, TEXTS))
    assert hf_datasets.num_rows(saved["dir"]) == hf_datasets.num_rows(saved["parquet"]) == 4
