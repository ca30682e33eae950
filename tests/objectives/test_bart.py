"""BART noises (fairseq denoising_dataset.py semantics), the shared seq2seq batch, and learning."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ptmkit.data.shards import Window
from ptmkit.errors import UserError
from ptmkit.objectives import get_objective
from ptmkit.objectives.bart import NOISES, REPLACE_LENGTH, place_spans, whole_word_mask
from ptmkit.objectives.base import Vocab
from ptmkit.objectives.noise import (poisson_pmf, poisson_span_lengths, rotated, segments_permuted,
                                     token_word_starts)

SEQ_LEN = 64
seeds = st.integers(0, 2**32 - 1)
lengths = st.integers(0, SEQ_LEN)


def is_subsequence(short: np.ndarray, long: np.ndarray) -> bool:
    it = iter(long.tolist())
    return all(token in it for token in short.tolist())


def is_rotation(a: np.ndarray, b: np.ndarray) -> bool:
    return len(a) == len(b) and any((np.roll(b, -s) == a).all() for s in range(max(1, len(b))))


def examples(vocab, random_window, noise, n=200, seq_len=SEQ_LEN, **options):
    objective = get_objective("bart")(vocab, seq_len, {"noise": noise, **options})
    rng = np.random.default_rng(0)
    return [objective.make_example(random_window(rng, objective.window_length(), vocab), rng)
            for _ in range(n)]


# ---- pure noise functions ------------------------------------------------------------------

@settings(max_examples=150, deadline=None)
@given(budget=lengths, lam=st.floats(0.1, 10), seed=seeds)
def test_poisson_span_lengths_fill_the_budget_exactly(budget, lam, seed) -> None:
    spans = poisson_span_lengths(budget, lam, np.random.default_rng(seed))
    assert spans.dtype == np.int64 and (spans >= 0).all()
    assert spans.sum() == budget
    assert len(spans) == 0 or spans[-1] > 0  # the cut last span still reaches the budget


def test_span_lengths_follow_poisson_3_including_zero() -> None:
    # Every span but each draw's last (cut to the budget, so biased) is an i.i.d. truncated
    # Poisson(3) draw. A budget of 1000 gives ~330 spans per draw, so dropping one shifts each
    # frequency by < 0.3 standard errors; 300 draws give N ~ 1e5 spans, and each frequency must
    # lie within the 4-standard-error binomial band of objectives.md §0.
    rng = np.random.default_rng(0)
    spans = np.concatenate([poisson_span_lengths(1000, 3.0, rng)[:-1] for _ in range(300)])
    pmf, n = poisson_pmf(3.0), len(spans)
    assert n > 9e4
    for k in range(9):
        p_hat = float((spans == k).mean())
        assert abs(p_hat - pmf[k]) <= 4 * math.sqrt(pmf[k] * (1 - pmf[k]) / n), k
    assert abs(pmf[0] - math.exp(-3)) < 1e-6  # ~5% of spans are pure insertions


@settings(max_examples=150, deadline=None)
@given(length=lengths, cuts=st.lists(st.integers(-3, SEQ_LEN + 3), max_size=12),
       fraction=st.floats(0, 1), seed=seeds)
def test_segments_permuted_moves_whole_segments(length, cuts, fraction, seed) -> None:
    tokens = np.arange(length, dtype=np.int64)  # ids = positions: segments stay identifiable
    out = segments_permuted(tokens, np.array(cuts, dtype=np.int64), fraction, np.random.default_rng(seed))
    assert out.dtype == np.int64 and sorted(out.tolist()) == tokens.tolist()
    bounds = sorted({c for c in cuts if 0 < c < length})
    original = {tuple(s) for s in np.split(tokens, bounds)} if length else set()
    runs = np.split(out, np.flatnonzero(np.diff(out) != 1) + 1) if length else []
    # every run of consecutive ids is made of whole original segments
    for run in runs:
        assert run[0] in {s[0] for s in original} and run[-1] in {s[-1] for s in original}


@settings(max_examples=100, deadline=None)
@given(length=lengths, seed=seeds)
def test_rotated_is_a_rotation(length, seed) -> None:
    tokens = np.arange(length, dtype=np.int64)
    out = rotated(tokens, np.random.default_rng(seed))
    assert out.dtype == np.int64 and is_rotation(out, tokens)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(length=lengths, ratio=st.floats(0, 1), replace_length=st.sampled_from([-1, 0, 1]),
       random_ratio=st.floats(0, 1), infill=st.booleans(), word_density=st.floats(0.2, 1),
       seed=seeds)
def test_whole_word_mask_properties(vocab, length, ratio, replace_length, random_ratio, infill,
                                    word_density, seed) -> None:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(vocab.first_normal_id, vocab.size, size=length)
    is_word_start = rng.random(length) < word_density
    budget = math.ceil(is_word_start.sum() * ratio)
    spans = poisson_span_lengths(budget, 3.0, rng) if infill else np.ones(budget, dtype=np.int64)
    out = whole_word_mask(tokens, is_word_start, spans, replace_length, random_ratio, vocab, rng)
    assert out.dtype == np.int64 and ((out >= 0) & (out < vocab.size)).all()
    n_inserts = int((spans == 0).sum())
    assert len(out) <= length + n_inserts
    if replace_length == 0 and not n_inserts:
        assert is_subsequence(out, tokens)
    if replace_length == -1 and not n_inserts:
        assert len(out) == length
    if random_ratio == 0:
        assert is_subsequence(out[out != vocab.special.mask], tokens)


@pytest.mark.parametrize("seed", range(20))
def test_a_zero_length_span_inserts_one_mask_and_a_span_becomes_one(vocab, seed) -> None:
    """Text infilling (fairseq `add_insertion_noise`): each 0-length span adds a <mask> and
    removes nothing; a 2-word span becomes a single <mask>."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(vocab.first_normal_id, vocab.size, size=30)
    words = np.ones(30, dtype=bool)
    mask = vocab.special.mask
    out = whole_word_mask(tokens, words, np.array([0, 0, 0]), 1, 0.0, vocab, rng)
    assert (out == mask).sum() == 3 and (out[out != mask] == tokens).all()
    out = whole_word_mask(tokens, words, np.array([2, 0]), 1, 0.0, vocab, rng)
    assert (out == mask).sum() == 2 and len(out) == 30 - 2 + 1 + 1
    assert is_subsequence(out[out != mask], tokens)


def test_spans_cover_whole_words_and_about_the_budget() -> None:
    # Spans are placed independently, so overlaps (and cuts at the end of the text) make the
    # union smaller than the budget: ~11% at 30% density over 62 tokens (measured: 0.89 on
    # average). 0.85 is a loose floor that still fails if spans do not extend past their start
    # word (the union would then be ~1/3 of the budget).
    rng = np.random.default_rng(0)
    ratios = []
    for _ in range(2000):
        budget = math.ceil(62 * 0.3)
        spans = poisson_span_lengths(budget, 3.0, rng)
        starts, ends = place_spans(np.ones(62, dtype=bool), spans[spans > 0], rng)
        covered = np.zeros(62, dtype=bool)
        for a, b in zip(starts, ends):
            covered[a:b] = True
        assert covered.sum() <= budget
        ratios.append(covered.sum() / budget)
    assert 0.85 <= np.mean(ratios) <= 1.0
    # with a word table, a one-word span runs to the next word start
    is_word_start = np.array([1, 0, 0, 1, 0, 1], dtype=bool)
    starts, ends = place_spans(is_word_start, np.array([1, 1, 1]), rng)
    assert sorted(zip(starts.tolist(), ends.tolist())) == [(0, 3), (3, 5), (5, 6)]


# ---- the objective ---------------------------------------------------------------------------

@pytest.mark.parametrize("noise", [[name] for name in NOISES] + [["text_infill", "sentence_permute"]])
def test_frame_decoder_input_and_labels(vocab, random_window, noise) -> None:
    special = vocab.special
    for ex in examples(vocab, random_window, noise, n=50):
        source, target = ex["input_ids"], ex["labels"]
        assert source[0] == special.bos and source[-1] == special.eos
        assert target[0] == special.bos and target[-1] == special.eos and len(target) == SEQ_LEN
        assert len(source) <= SEQ_LEN and source.dtype == target.dtype == np.int64
        assert ((source >= 0) & (source < vocab.size)).all()
        assert (ex["decoder_input_ids"] == np.concatenate([[special.eos], target[:-1]])).all()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(length=st.integers(0, SEQ_LEN - 2), masking=st.sampled_from([None, *REPLACE_LENGTH]),
       others=st.sets(st.sampled_from(["sentence_permute", "document_rotate"])),
       random_ratio=st.floats(0, 1), seed=seeds)
def test_any_window_any_noise(vocab, length, masking, others, random_ratio, seed) -> None:
    noise = sorted(others) + ([masking] if masking else [])
    objective = get_objective("bart")(vocab, SEQ_LEN, {"noise": noise, "random_ratio": random_ratio})
    rng = np.random.default_rng(seed)
    window = Window(rng.integers(vocab.first_normal_id, vocab.size, size=length),
                    np.sort(rng.choice(max(length, 1), size=min(length, 4), replace=False)), np.array([0]))
    ex = objective.make_example(window, rng)
    source, special = ex["input_ids"], vocab.special
    assert all(ex[key].dtype == np.int64 for key in ex) and len(ex["labels"]) == length + 2
    assert source[0] == special.bos and source[-1] == special.eos and 2 <= len(source) <= SEQ_LEN
    assert ((source >= 0) & (source < vocab.size)).all()
    assert not np.isin(source[1:-1], [special.bos, special.eos, special.pad]).any()


def test_token_mask_keeps_length_and_changes_only_masked(vocab, random_window) -> None:
    for ex in examples(vocab, random_window, ["token_mask"]):
        source, target = ex["input_ids"], ex["labels"]
        assert len(source) == len(target)
        changed = source != target
        assert (source[changed] == vocab.special.mask).all()
        assert changed.sum() == math.ceil((SEQ_LEN - 2) * 0.3)  # one-token spans never overlap


def test_token_mask_takes_whole_words_from_the_vocab_table(vocab, random_window) -> None:
    table = np.arange(vocab.size) % 3 == 0  # ids divisible by 3 start words
    worded = Vocab(vocab.size, vocab.special, word_start=table)
    objective = get_objective("bart")(worded, SEQ_LEN, {"noise": ["token_mask"]})
    rng = np.random.default_rng(0)
    for _ in range(100):
        window = random_window(rng, objective.window_length(), vocab)
        ex = objective.make_example(window, rng)
        masked = ex["input_ids"] != ex["labels"]
        starts = table[ex["labels"]]
        starts[0] = True  # <s>; a text may also open mid-word
        assert not (masked[1:] & ~starts[1:] & ~masked[:-1]).any(), "a word's tail masked alone"
        assert not (masked[:-1] & ~starts[1:] & ~masked[1:])[:-1].any(), "a word masked in part"
        assert (masked & starts).sum() == math.ceil(table[window.tokens].sum() * 0.3)


def test_word_starts_come_from_window_then_vocab(vocab) -> None:
    window = Window(np.array([10, 11, 12]), np.array([0]), np.array([0]))
    assert token_word_starts(window, vocab).tolist() == [True] * 3
    table = np.arange(vocab.size) % 2 == 0
    assert token_word_starts(window, Vocab(vocab.size, vocab.special, word_start=table)).tolist() == [
        True, False, True]
    flagged = Window(window.tokens, window.sentence_starts, window.document_starts,
                     word_starts=np.array([True, True, False]))
    assert token_word_starts(flagged, Vocab(vocab.size, vocab.special, word_start=table)).tolist() == [
        True, True, False]


def test_token_delete_drops_tokens_without_masks(vocab, random_window) -> None:
    for ex in examples(vocab, random_window, ["token_delete"]):
        source, target = ex["input_ids"], ex["labels"]
        assert vocab.special.mask not in source
        assert is_subsequence(source, target)
        assert len(source) == len(target) - math.ceil((SEQ_LEN - 2) * 0.3)


def test_text_infill_leaves_a_subsequence_and_masks(vocab, random_window) -> None:
    n_masks = []
    for ex in examples(vocab, random_window, ["text_infill"]):
        source, target = ex["input_ids"], ex["labels"]
        assert is_subsequence(source[source != vocab.special.mask], target)
        n_masks.append(int((source == vocab.special.mask).sum()))
    # ~19 masked tokens in spans of mean ~3.2 (zeros excluded) -> ~6 masks per example
    assert 3 <= np.mean(n_masks) <= 9 and len(set(n_masks)) > 1


def test_sentence_permute_keeps_sentences_and_length(vocab, random_window) -> None:
    objective = get_objective("bart")(vocab, SEQ_LEN, {"noise": ["sentence_permute"]})
    rng = np.random.default_rng(0)
    moved = 0
    for _ in range(50):
        window = random_window(rng, objective.window_length(), vocab, n_docs=2)
        ex = objective.make_example(window, rng)
        source, target = ex["input_ids"], ex["labels"]
        assert len(source) == len(target)
        starts = np.union1d(window.sentence_starts, window.document_starts)
        sentences = sorted(tuple(s) for s in np.split(target[1:-1], starts[starts > 0]))
        rebuilt = [tuple(source[1:-1][i: i + len(s)]) for i, s in _offsets(source[1:-1], sentences)]
        assert sorted(rebuilt) == sentences
        moved += int((source != target).any())
    assert moved >= 45  # 8 segments per window: the identity order has probability 1/8!


def _offsets(text: np.ndarray, sentences: list[tuple]) -> list[tuple[int, tuple]]:
    """Greedy split of `text` into the given sentences (random ids make the match unique)."""
    out, i, pending = [], 0, list(sentences)
    while pending:
        s = next(s for s in pending if tuple(text[i: i + len(s)]) == s)
        pending.remove(s)
        out.append((i, s))
        i += len(s)
    return out


def test_document_rotate_rotates_the_interior(vocab, random_window) -> None:
    rotated_count = 0
    for ex in examples(vocab, random_window, ["document_rotate"], n=100):
        source, target = ex["input_ids"], ex["labels"]
        assert is_rotation(source[1:-1], target[1:-1])
        rotated_count += int((source != target).any())
    assert rotated_count >= 90  # identity has probability 2/63 per example


def test_noise_is_seeded(vocab, random_window) -> None:
    objective = get_objective("bart")(vocab, SEQ_LEN)
    window = random_window(np.random.default_rng(1), objective.window_length(), vocab)
    a, b, c = (objective.make_example(window, np.random.default_rng(s)) for s in (7, 7, 8))
    assert (a["input_ids"] == b["input_ids"]).all()
    assert len(a["input_ids"]) != len(c["input_ids"]) or (a["input_ids"] != c["input_ids"]).any()


def test_bad_noise_options_are_user_errors(vocab) -> None:
    bart = get_objective("bart")
    with pytest.raises(UserError) as error:
        bart(vocab, SEQ_LEN, {"noise": ["text_infill", "shuffle"]})
    assert all(name in str(error.value) for name in NOISES) and "'shuffle'" in str(error.value)
    with pytest.raises(UserError, match="exclude each other"):
        bart(vocab, SEQ_LEN, {"noise": ["token_mask", "text_infill"]})
    with pytest.raises(UserError, match="mask_ratio"):
        bart(vocab, SEQ_LEN, {"mask_ratio": 1.5})
    assert bart(vocab, SEQ_LEN, {"noise": "token_delete, document_rotate"}).options.noise == [
        "token_delete", "document_rotate"]
