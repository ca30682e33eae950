from __future__ import annotations

import numpy as np

from ptmkit.objectives import get_objective


def test_labels_are_inputs_shifted_once(vocab, random_window) -> None:
    objective = get_objective("clm")(vocab, 32)
    window = random_window(np.random.default_rng(0), objective.window_length(), vocab, n_docs=2)
    ex = objective.make_example(window, np.random.default_rng(0))
    assert ex["input_ids"].shape == ex["labels"].shape == (32,)
    assert (ex["input_ids"][1:] == ex["labels"][:-1]).all()
    # the document boundary becomes an end-of-text token that is also a target
    assert (ex["labels"] == vocab.special.eos).sum() == 1


def test_no_separator_within_one_document(vocab, random_window) -> None:
    objective = get_objective("clm")(vocab, 32)
    window = random_window(np.random.default_rng(1), objective.window_length(), vocab, n_docs=1)
    ex = objective.make_example(window, np.random.default_rng(0))
    assert (ex["input_ids"] == window.tokens[:32]).all()
    assert (ex["labels"] == window.tokens[1:33]).all()
