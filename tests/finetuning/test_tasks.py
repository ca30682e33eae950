"""Task metrics on hand-checked examples, label mapping, padding."""

from __future__ import annotations

import numpy as np
import pytest

from ptmkit.errors import UserError
from ptmkit.finetuning.tasks import Classify, Regress, TaskSpec, pad_batch


def test_classification_metrics_by_hand() -> None:
    task = Classify(TaskSpec(name="classify", labels=["0", "1"]), tokenizer=None, pooling="first", token_types=False)
    m = task.metrics([1, 1, 0, 0, 1], [1, 0, 0, 0, 1])
    assert m["accuracy"] == pytest.approx(0.8)
    # tp=2 fp=1 fn=0 -> f1 = 4/5; mcc = (2*2 - 1*0)/sqrt(3*2*2*3) = 4/6
    assert m["f1"] == pytest.approx(0.8) and m["mcc"] == pytest.approx(4 / 6)
    assert m["top_class_share"] == pytest.approx(0.6)  # three of five predictions are class 1
    assert task.metrics([0, 0, 0], [1, 0, 0])["top_class_share"] == 1.0  # one class answered for all


def test_regression_metrics_and_constant_prediction() -> None:
    task = Regress(TaskSpec(name="regress"), tokenizer=None, pooling="first", token_types=False)
    m = task.metrics([1.0, 2.0, 3.0, 5.0], [2.0, 4.0, 6.0, 10.0])
    assert m["pearson"] == pytest.approx(1.0) and m["spearman"] == pytest.approx(1.0)
    assert task.metrics([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]) == {"pearson": 0.0, "spearman": 0.0}


def test_labels_are_learned_in_natural_order_and_unseen_ones_rejected() -> None:
    task = Classify(TaskSpec(name="classify"), tokenizer=None, pooling="first", token_types=False)
    task.fit_labels([{"label": v} for v in ["10", "2", "0", "2"]])
    assert task.spec.labels == ["0", "2", "10"]
    assert task.targets([{"label": "10"}, {"label": "0"}], "f") == [2, 0]
    with pytest.raises(UserError, match="'7'.*known labels: 0, 2, 10"):
        task.targets([{"label": "7"}], "dev.tsv")


def test_pad_batch_pads_right_and_marks_valid() -> None:
    items = [{"input_ids": np.array([2, 9, 3]), "target": np.asarray(1)},
             {"input_ids": np.array([2, 3]), "target": np.asarray(0)}]
    batch = pad_batch(items, pad_id=0)
    assert batch["input_ids"].tolist() == [[2, 9, 3], [2, 3, 0]]
    assert batch["valid"].tolist() == [[True, True, True], [True, True, False]]
    assert batch["target"].tolist() == [1, 0]
