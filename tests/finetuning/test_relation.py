"""`--task relation`: entity markers found in text and tokens, the head reading exactly the marker
positions, F1 without the negative class, and a tiny fine-tune end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from ptmkit.data.tokenizer import train_tokenizer
from ptmkit.errors import UserError
from ptmkit.finetuning.data import read_records
from ptmkit.finetuning.relation import Relation, marker_start, window
from ptmkit.finetuning.run import evaluate, finetune
from ptmkit.finetuning.tasks import TaskSpec

TEXT = "the << EGF receptor >> is blocked by [[ gefitinib ]] in cells"


def relation(tokenizer=None, labels=None, negative=None, max_length: int = 64) -> Relation:
    spec = TaskSpec(name="relation", labels=labels or [], negative_label=negative, max_length=max_length)
    return Relation(spec, tokenizer, "first", False)


@pytest.fixture(scope="module", params=["bpe", "wordpiece", "unigram"])
def tokenizer(request):
    texts = [TEXT, "a << b >> c [[ d ]] e", "6[[(3-iodophenyl) methyl]amino] and << x >>"] * 30
    return train_tokenizer(texts, kind=request.param, vocab_size=450, show_progress=False)


def test_marker_is_the_first_occurrence_followed_by_space() -> None:
    text = "the << A3 receptor >> agonist IB (1-6[[(3-iodophenyl) methyl]) and [[ IB-MECA ]]"
    assert text[marker_start(text, "[["):].startswith("[[ IB-MECA")
    assert marker_start(text, "<<") == 4 and marker_start("no markers", "<<") == -1


def test_positions_are_the_marker_tokens(tokenizer) -> None:
    item = relation(tokenizer).encode_texts([{"text": TEXT}])[0]
    ids = item["input_ids"].tolist()
    assert tokenizer.decode([ids[int(item["head_at"])]]).strip().startswith("<")
    assert tokenizer.decode([ids[int(item["tail_at"])]]).strip().startswith("[")
    # the token before each marker is the last one of the preceding word
    assert tokenizer.decode(ids[1:int(item["head_at"])]).strip() == "the"
    assert tokenizer.decode(ids[1:int(item["tail_at"])]).replace(" ", "").endswith("blockedby")


def test_text_outside_the_markers_leaves_the_positions_alone(tokenizer) -> None:
    task = relation(tokenizer)
    base, changed = task.encode_texts([{"text": TEXT}, {"text": TEXT.replace("in cells", "in many other cell lines")}])
    assert (base["head_at"], base["tail_at"]) == (changed["head_at"], changed["tail_at"])
    longer = task.encode_texts([{"text": "so " + TEXT}])[0]  # text before: both move together
    shift = int(longer["head_at"] - base["head_at"])
    assert shift >= 1 and int(longer["tail_at"] - base["tail_at"]) == shift


class Recorder(nn.Module):
    """A head that keeps its input."""

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        self.seen = pairs
        return pairs


def test_the_head_reads_the_two_marker_states(tokenizer) -> None:
    task = relation(tokenizer)
    items = task.encode_texts([{"text": TEXT}, {"text": "x << y >> and [[ z ]]"}])
    batch = task.collate([{**item, "target": np.asarray(0)} for item in items])
    length = batch["input_ids"].shape[1]
    features = torch.arange(length, dtype=torch.float32)[None, :, None].expand(2, length, 3)  # state = position
    head = Recorder()
    task.head_output(features, batch, head)
    assert head.seen.shape == (2, 6)
    assert head.seen[:, 0].tolist() == batch["head_at"].float().tolist()
    assert head.seen[:, 3].tolist() == batch["tail_at"].float().tolist()


def test_window_keeps_both_markers() -> None:
    assert window(5, [1, 3], 8) == [0, 1, 2, 3, 4]
    kept = window(100, [60, 70], 20)
    assert len(kept) == 20 and 60 in kept and 70 in kept
    far = window(100, [10, 90], 20)
    assert len(far) == 20 and far[0] == 10 and far[10] == 90


def test_f1_leaves_out_the_detected_negative_class() -> None:
    task = relation(labels=["A", "B", "false"])
    assert task.negative() == "false"
    # gold A, false, B, A; predicted A, A, false, A -> tp 2, fp 1, fn 1 over A and B
    m = task.metrics([0, 0, 2, 0], [0, 2, 1, 0])
    assert m["f1"] == pytest.approx(2 / 3) and m["accuracy"] == pytest.approx(0.5)
    plain = relation(labels=["A", "B", "C"])
    assert plain.negative() is None
    assert relation(labels=["DDI-advise", "DDI-false"]).negative() == "DDI-false"  # DDI 2013
    assert relation(labels=["/people/person/place_lived", "NA"]).negative() == "NA"  # NYT
    m = plain.metrics([0, 0, 2, 0], [0, 2, 1, 0])
    assert m["f1"] == pytest.approx(m["accuracy"])


def test_relation_input_errors(tmp_path) -> None:
    task = relation(negative="NONE")
    with pytest.raises(UserError, match="'NONE' is not a training label"):
        task.fit_labels([{"text": TEXT, "label": "A"}])
    with pytest.raises(UserError, match=r"marker '\[\['.*example 2"):
        task.check([{"text": TEXT, "label": "A"}, {"text": "<< a >> b", "label": "A"}], "train.jsonl")


def write_relations(path, n: int, seed: int) -> None:
    """The verb between the entities gives the relation away."""
    rng = np.random.default_rng(seed)
    verbs = {"inhibits": "INHIBITOR", "activates": "ACTIVATOR", "binds": "false"}
    nouns = "egf kinase receptor insulin gefitinib aspirin".split()
    lines = []
    for _ in range(n):
        verb = str(rng.choice(list(verbs)))
        a, b = rng.choice(nouns, size=2, replace=False)
        lines.append(json.dumps({"text": f"we see that << {a} >> {verb} [[ {b} ]] here", "label": verbs[verb]}))
    path.write_text("\n".join(lines) + "\n")


def test_tiny_finetune_writes_f1_and_evaluate_rescores(tmp_path, scratch_spec) -> None:
    write_relations(tmp_path / "train.jsonl", 200, 0)
    write_relations(tmp_path / "dev.jsonl", 50, 1)
    texts = [json.loads(line)["text"] for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    train_tokenizer(texts, kind="bpe", vocab_size=450, show_progress=False).save(tmp_path / "tok")
    run = tmp_path / "run"
    result = finetune(scratch_spec("relation", tmp_path / "tok", run, str(tmp_path / "train.jsonl"),
                                   str(tmp_path / "dev.jsonl"), epochs=3))
    saved = json.loads((run / "eval.json").read_text())
    assert saved["main_metric"] == "f1" and isinstance(saved["f1"], float) and isinstance(saved["accuracy"], float)
    again = evaluate(run, str(tmp_path / "dev.jsonl"))
    assert again["f1"] == pytest.approx(result["f1"])


@pytest.mark.shared
def test_every_chemprot_example_has_both_markers(shared_data) -> None:
    path = shared_data("domain/biomed/chemprot/dev.jsonl")
    relation().check(read_records(path), str(path))
