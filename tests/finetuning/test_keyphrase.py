"""`--task keyphrase`: the Inspec / SemEval zip layouts, the fixed dev split, BIO labels from
stemmed gold phrases, F1@k on hand examples, and a tiny fine-tune end to end."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from ptmkit.data.tokenizer import train_tokenizer
from ptmkit.errors import UserError
from ptmkit.finetuning.keyphrase import DocTarget, Keyphrase, bio_tags, f1_at, read_zip, stem, stemmed
from ptmkit.finetuning.run import evaluate, finetune
from ptmkit.finetuning.tasks import TaskSpec


def keyphrase() -> Keyphrase:
    return Keyphrase(TaskSpec(name="keyphrase"), None, "first", False)


def write_zip(path: Path, docs: dict[str, tuple[str, list[str] | None]], root: str = "") -> Path:
    """docs: id -> (text, key lines or None for no key file), under `root` (Inspec/...) or bare."""
    with zipfile.ZipFile(path, "w") as archive:
        if root:
            archive.writestr(f"{root}/language.txt", "english\n")
        for doc_id, (text, keys) in docs.items():
            archive.writestr(f"{root}docsutf8/{doc_id}.txt", text)
            if keys is not None:
                archive.writestr(f"{root}keys/{doc_id}.key", "\n".join(keys) + "\n")
    return path


def test_both_layouts_read_and_documents_without_keys_are_skipped(tmp_path) -> None:
    docs = {"1": ("Neural networks\n\tfor parsing.", ["neural \tnetworks", "", "parsing"]),
            "2": ("No keys here.", None), "3": ("Empty key file.", [])}
    inspec = write_zip(tmp_path / "Inspec.zip", docs, root="Inspec/")
    flat = write_zip(tmp_path / "flat.zip", docs)
    with pytest.warns(UserWarning, match="2 of 3 documents have no keys"):
        assert read_zip(inspec) == [("Inspec/1", "Neural networks\n\tfor parsing.", ["neural networks", "parsing"])]
    with pytest.warns(UserWarning):
        assert [d[0] for d in read_zip(flat)] == ["1"]
    (tmp_path / "notzip.zip").write_text("x")
    with pytest.raises(UserError, match="not a zip"):
        read_zip(tmp_path / "notzip.zip")
    with pytest.raises(UserError, match="no docsutf8"):
        read_zip(write_zip(tmp_path / "empty.zip", {}, root="X/"))


def test_fixed_split_is_disjoint_and_complete(tmp_path) -> None:
    path = write_zip(tmp_path / "d.zip", {str(i): (f"text {i}", ["text"]) for i in range(40)})
    task = keyphrase()
    train, devs = task.resolve_files(str(path), [])
    assert (train, devs) == (f"{path}:train", [f"{path}:dev"])
    assert task.resolve_files(str(path), [str(path)]) == (train, devs)
    assert task.resolve_files(str(path), [f"{path}:dev"]) == (train, devs)  # trained on dev before
    assert task.resolve_files(f"{path}:train", [f"{path}:dev"]) == (train, devs)
    for overlapping in ([f"{path}:train"], [str(path)], [f"{path}:dev", f"{path}:all"]):
        with pytest.raises(UserError, match="shares documents with --train"):
            task.resolve_files(f"{path}:train", overlapping)
    ids = {split: {r["id"] for r in task.read(f"{path}:{split}")} for split in ("train", "dev", "all")}
    assert ids["train"].isdisjoint(ids["dev"]) and ids["train"] | ids["dev"] == ids["all"]
    assert 2 <= len(ids["dev"]) <= 16  # about one in five


def test_gold_phrases_are_matched_stemmed_and_case_insensitively() -> None:
    words = "Neural Networks train a neural network with networks".split()
    tags = bio_tags([stem(w) for w in words], [stemmed("neural network"), stemmed("network")])
    assert tags == ["B-KP", "I-KP", "O", "O", "B-KP", "I-KP", "O", "B-KP"]


def test_f1_at_k_by_hand() -> None:
    ranked = [["neural network", "pars", "train"]]
    gold = [["neural network", "pars", "graph"]]
    # @5: 2 right of 5 (two missing ones count as wrong), 2 of 3 found -> 2*0.4*(2/3)/(0.4+2/3)
    assert f1_at(ranked, gold, 5) == pytest.approx(0.5)
    assert f1_at(ranked, gold, 1) == pytest.approx(2 * 1 * (1 / 3) / (1 + 1 / 3))
    assert f1_at(ranked, gold, None) == pytest.approx(2 / 3)
    assert f1_at([[], ["x"]], [["a"], ["x"]], None) == pytest.approx(0.5)  # mean over documents


def test_predicted_spans_are_ranked_deduplicated_and_stemmed() -> None:
    target = DocTarget(stems=tuple(stem(w) for w in "Neural Networks and neural network parsing".split()),
                       gold=(" ".join(stemmed("neural networks")), " ".join(stemmed("graphs"))))
    spans = [(5, 5, 0.2), (0, 1, 0.9), (3, 4, 0.8)]  # parsing, Neural Networks, neural network
    m = keyphrase().metrics([spans], [target])
    # ranked: "neural network" (once), "pars" -> @M: P 1/2, R 1/2
    assert m["f1@M"] == pytest.approx(0.5)
    assert m["f1@5"] == pytest.approx(2 * 0.2 * 0.5 / 0.7) and set(m) == {"f1@5", "f1@10", "f1@M"}


def synthetic_docs(n: int, seed: int) -> dict[str, tuple[str, list[str]]]:
    """Documents whose keyphrases are the 'x method' / 'y model' phrases among filler words."""
    rng = np.random.default_rng(seed)
    filler, heads = "we use the a of and in this paper show".split(), "graph neural kernel tree".split()
    docs = {}
    for i in range(n):
        words, keys = [], []
        for _ in range(8):
            if rng.random() < 0.3:
                phrase = f"{rng.choice(heads)} {rng.choice(['method', 'model'])}"
                words.append(phrase)
                keys.append(phrase)
            else:
                words.append(str(rng.choice(filler)))
        docs[f"{seed}-{i}"] = (" ".join(words) + ".", keys or ["graph method"])
    return docs


def test_tiny_finetune_writes_f1_at_k_and_evaluate_rescores(tmp_path, scratch_spec) -> None:
    docs = synthetic_docs(150, 0)
    path = write_zip(tmp_path / "Tiny.zip", docs, root="Tiny/")
    train_tokenizer([t for t, _ in docs.values()], kind="bpe", vocab_size=450,
                    show_progress=False).save(tmp_path / "tok")
    run = tmp_path / "run"
    result = finetune(scratch_spec("keyphrase", tmp_path / "tok", run, str(path), None, epochs=3))
    saved = json.loads((run / "eval.json").read_text())
    assert saved["main_metric"] == "f1@M" and all(isinstance(saved[k], float) for k in ("f1@5", "f1@10", "f1@M"))
    assert saved["train_examples"] + saved["dev_examples"] == 150
    again = evaluate(run, f"{path}:dev")
    assert again["f1@M"] == pytest.approx(result["f1@M"]) and again["examples"] == saved["dev_examples"]


@pytest.mark.shared
def test_semeval2017_zip_reads(shared_data) -> None:
    docs = read_zip(shared_data("tasks/keyphrase/SemEval2017.zip"))
    assert len(docs) == 493 and all(keys for _, _, keys in docs)
