"""T5 span corruption: exact counts, sentinels, round trip and the expanded-length arithmetic."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ptmkit.data.shards import Window
from ptmkit.errors import UserError
from ptmkit.objectives import get_objective

from ptmkit.objectives.noise import random_segmentation, random_spans_noise_mask, span_counts
from ptmkit.objectives.t5 import corrupted_lengths, expanded_length

seeds = st.integers(0, 2**32 - 1)


def runs(mask: np.ndarray) -> list[tuple[bool, int]]:
    """(value, length) of each maximal run of equal values."""
    if len(mask) == 0:
        return []
    edges = np.flatnonzero(np.diff(mask.astype(int))) + 1
    return [(bool(part[0]), len(part)) for part in np.split(mask, edges)]


def uncorrupted(inputs: np.ndarray, targets: np.ndarray, sentinels: tuple[int, ...]) -> list[int]:
    """Replace each sentinel of `inputs` by the target tokens that follow the same sentinel."""
    after: dict[int, list[int]] = {}
    for token in targets[:-1].tolist():
        if token in sentinels:
            current = after.setdefault(token, [])
        else:
            current.append(token)
    out = []
    for token in inputs[:-1].tolist():
        out.extend(after[token] if token in sentinels else [token])
    return out


@settings(max_examples=200, deadline=None)
@given(items=st.integers(1, 600), data=st.data(), seed=seeds)
def test_random_segmentation(items, data, seed) -> None:
    segments = data.draw(st.integers(1, items))
    parts = random_segmentation(items, segments, np.random.default_rng(seed))
    assert len(parts) == segments and (parts > 0).all() and parts.sum() == items


@settings(max_examples=300, deadline=None)
@given(length=st.integers(0, 600), density=st.floats(0.01, 0.99), mean=st.floats(1, 10), seed=seeds)
def test_noise_mask_counts_and_interleaving(length, density, mean, seed) -> None:
    mask = random_spans_noise_mask(length, density, mean, np.random.default_rng(seed))
    noise, spans = span_counts(length, density, mean)
    assert mask.shape == (length,) and mask.dtype == bool
    assert mask.sum() == noise
    pattern = runs(mask)
    assert [value for value, _ in pattern] == [i % 2 == 1 for i in range(len(pattern))]  # nn first
    assert sum(value for value, _ in pattern) == spans  # every span non-empty, ends with noise
    if length >= 2:
        assert noise == min(max(round(length * density), 1), length - 1)


def test_span_counts_follow_t5() -> None:
    assert span_counts(568, 0.15, 3.0) == (85, 28)
    assert span_counts(0, 0.15, 3.0) == span_counts(1, 0.15, 3.0) == (0, 0)
    assert span_counts(2, 0.15, 3.0) == (1, 1)  # clamped to one noise token and one span


def test_expanded_length_arithmetic() -> None:
    # objectives.md §11: 568 raw tokens -> 85 noise tokens in 28 spans, inputs
    # 568 - 85 + 28 + 1 = 512, targets 85 + 28 + 1 = 114
    assert expanded_length(512, 0.15, 3.0) == (568, 114)
    assert corrupted_lengths(568, 0.15, 3.0) == (512, 114)
    for inputs_length in range(1, 300):
        raw, _ = expanded_length(inputs_length, 0.15, 3.0)
        assert corrupted_lengths(raw, 0.15, 3.0)[0] <= inputs_length
        assert corrupted_lengths(raw + 1, 0.15, 3.0)[0] > inputs_length


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(length=st.integers(0, 80), seed=seeds)
def test_example_lengths_round_trip_and_sentinel_order(vocab, length, seed) -> None:
    objective = get_objective("t5")(vocab, 64)
    rng = np.random.default_rng(seed)
    tokens = rng.integers(vocab.first_normal_id, vocab.size, size=length)
    ex = objective.make_example(Window(tokens, np.array([0]), np.array([0])), rng)
    inputs, targets, special = ex["input_ids"], ex["labels"], vocab.special
    noise, spans = span_counts(length, 0.15, 3.0)
    assert all(ex[key].dtype == np.int64 for key in ex)
    assert (len(inputs), len(targets)) == corrupted_lengths(length, 0.15, 3.0)
    assert len(inputs) == length - noise + spans + 1 and len(targets) == noise + spans + 1
    assert inputs[-1] == targets[-1] == special.eos
    assert (ex["decoder_input_ids"] == np.concatenate([[special.pad], targets[:-1]])).all()
    assert uncorrupted(inputs, targets, special.sentinels) == tokens.tolist()
    in_sentinels = [t for t in inputs.tolist() if t in special.sentinels]
    assert in_sentinels == list(special.sentinels[:spans])
    if spans:
        assert [t for t in targets.tolist() if t in special.sentinels] == in_sentinels
        assert targets[0] == special.sentinels[0]


def test_full_windows_fill_seq_len_exactly(vocab, random_window) -> None:
    objective = get_objective("t5")(vocab, 512)
    assert objective.window_length() == 568
    window = random_window(np.random.default_rng(0), objective.window_length(), vocab)
    ex = objective.make_example(window, np.random.default_rng(0))
    assert len(ex["input_ids"]) == 512 and len(ex["labels"]) == 114


def test_mean_span_length_and_noise_fraction() -> None:
    rng = np.random.default_rng(0)
    masks = [random_spans_noise_mask(568, 0.15, 3.0, rng) for _ in range(200)]
    assert all(m.sum() == 85 for m in masks)
    lengths = [n for m in masks for value, n in runs(m) if value]
    assert len(lengths) == 200 * 28  # 85 noise tokens in 28 spans, every time
    # T5's `random_spans_noise_mask` cuts 85 into 28 parts uniformly over the compositions, so
    # a span has length n with probability C(85 - n - 1, 26) / C(84, 27): 1 in ~32% of spans
    expected = {n: math.comb(85 - n - 1, 26) / math.comb(84, 27) for n in (1, 2, 3, 6)}
    for n, share in expected.items():
        assert abs(lengths.count(n) / len(lengths) - share) < 0.02, (n, lengths.count(n) / len(lengths), share)


def test_too_many_spans_for_the_sentinels_is_a_user_error(vocab) -> None:
    with pytest.raises(UserError, match="sentinels"):
        get_objective("t5")(vocab, 4096)
    with pytest.raises(UserError, match="noise_density"):
        get_objective("t5")(vocab, 64, {"noise_density": 0})
