"""Whole-word masking: words chosen whole, BERT's token budget, 80/10/10 per token, jieba words."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ptmkit.data.shards import TokenShards, Window, prepare
from ptmkit.data.tokenizer import train_tokenizer
from ptmkit.objectives import get_objective
from ptmkit.objectives.base import IGNORE, Vocab
from ptmkit.objectives.noise import choose_whole_words, word_groups


def within(p_hat: float, p: float, n: int) -> bool:
    return abs(p_hat - p) <= 4 * np.sqrt(p * (1 - p) / n)


@pytest.fixture
def word_vocab(vocab: Vocab) -> Vocab:
    """Ids divisible by 3 continue a word (a `##` piece): words of 1 to ~4 pieces."""
    table = np.arange(vocab.size) % 3 != 0
    table[: vocab.first_normal_id] = True
    return dataclasses.replace(vocab, word_start=table)


def words_of(starts: np.ndarray, eligible: np.ndarray) -> list[np.ndarray]:
    groups = word_groups(starts, eligible)
    return [np.flatnonzero(groups == w) for w in range(groups.max() + 1)]


def glued(starts: np.ndarray, eligible: np.ndarray) -> np.ndarray:
    """(L-1,): True where token k+1 continues the word of token k (both eligible, k+1 no start)."""
    return eligible[:-1] & eligible[1:] & ~starts[1:]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=80),
       st.floats(0.0, 1.0), st.integers(0, 2**32 - 1))
def test_chosen_words_are_whole_and_fill_the_budget_greedily(flags, fraction, seed) -> None:
    starts, eligible = (np.array(column, dtype=bool) for column in zip(*flags))
    chosen = choose_whole_words(word_groups(starts, eligible), fraction, np.random.default_rng(seed))
    selected = np.zeros(len(starts), dtype=bool)
    selected[chosen] = True
    assert not selected[~eligible].any(), "ineligible tokens are never chosen"
    budget = max(1, round(fraction * eligible.sum()))
    assert selected.sum() <= budget
    pairs = glued(starts, eligible)
    assert (selected[:-1][pairs] == selected[1:][pairs]).all(), "a word is chosen whole or not at all"
    words = words_of(starts, eligible)
    assert sum(len(w) for w in words) == eligible.sum(), "every eligible token is in one word"
    for word in words:
        assert (np.diff(word) == 1).all() and pairs[word[:-1]].all(), "a word is one glued run"
        if not selected[word].any():
            assert len(word) > budget - selected.sum(), "a word that still fits would have been taken"


def sample(vocab: Vocab, random_window, n: int = 800, seq_len: int = 128):
    objective = get_objective("wwm")(vocab, seq_len)
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        window = random_window(rng, objective.window_length(), vocab, n_docs=1 + i % 3)
        out.append((objective.frame(window), objective.word_starts(window), objective.make_example(window, rng)))
    return objective, out


def test_whole_words_budget_and_80_10_10_per_token(word_vocab, random_window) -> None:
    _, examples = sample(word_vocab, random_window)
    special = list(word_vocab.special.all())
    selected = masked = random = kept = mixed_words = 0
    filled = []
    for original, starts, ex in examples:
        chosen = ex["labels"] != IGNORE
        is_eligible = ~np.isin(original, special)
        assert not chosen[~is_eligible].any(), "[CLS]/[SEP] are never selected"
        assert (ex["labels"][chosen] == original[chosen]).all()
        assert (ex["input_ids"][~chosen] == original[~chosen]).all()
        pairs = glued(starts, is_eligible)
        assert (chosen[:-1][pairs] == chosen[1:][pairs]).all(), "words are chosen whole"
        is_mask = ex["input_ids"] == word_vocab.special.mask
        mixed_words += int((pairs & chosen[:-1] & (is_mask[:-1] != is_mask[1:])).sum())
        budget = round(0.15 * is_eligible.sum())
        assert chosen.sum() <= budget
        filled.append(chosen.sum() / budget)
        selected += int(chosen.sum())
        inputs = ex["input_ids"][chosen]
        masked += int((inputs == word_vocab.special.mask).sum())
        same = inputs == original[chosen]
        kept += int(same.sum())
        random += int(((inputs != word_vocab.special.mask) & ~same).sum())
    assert np.mean(filled) > 0.98, "the budget is missed only when no remaining word fits"
    assert within(masked / selected, 0.8, selected)
    assert within(random / selected, 0.1, selected)
    assert within(kept / selected, 0.1, selected)
    assert mixed_words > 0, "80/10/10 is decided per token, so some words are part [MASK]"


def test_without_word_boundaries_every_token_is_a_word(vocab, random_window) -> None:
    """No table and no segmentation: exactly MLM's count, single tokens."""
    objective = get_objective("wwm")(vocab, 64)
    window = random_window(np.random.default_rng(1), objective.window_length(), vocab)
    assert objective.word_starts(window).all()
    ex = objective.make_example(window, np.random.default_rng(2))
    assert (ex["labels"] != IGNORE).sum() == round(0.15 * 62)


def test_window_word_starts_win_over_the_vocabulary_table(word_vocab) -> None:
    objective = get_objective("wwm")(word_vocab, 12)
    tokens = np.arange(200, 210)
    starts = np.array([1, 0, 0, 0, 0, 1, 0, 0, 0, 0], dtype=bool)
    window = Window(tokens, np.array([0]), np.array([0]), word_starts=starts)
    assert objective.word_starts(window).tolist() == [True, *starts, True]
    for seed in range(20):
        chosen = objective.make_example(window, np.random.default_rng(seed))["labels"] != IGNORE
        assert not chosen.any(), "two 5-piece words never fit a budget of round(0.15 * 10) = 2"


ZH = ["使用语言模型来预测下一个词。", "北京是中国的首都，也是全国的政治和文化中心。",
      "机器学习是人工智能的一个重要分支。", "深度学习需要大量的数据和强大的计算资源。"] * 10


@pytest.fixture(scope="module")
def zh_shards(tmp_path_factory) -> TokenShards:
    corpus = tmp_path_factory.mktemp("zh") / "zh.txt"
    corpus.write_text("\n\n".join(ZH) + "\n")
    tokenizer = train_tokenizer(ZH, kind="char", vocab_size=300, min_frequency=1, show_progress=False)
    prepare([corpus], tokenizer, corpus.parent / "d", val_fraction=0.0, progress=False, segment="jieba")
    return TokenShards(corpus.parent / "d")


def test_chinese_masked_spans_are_jieba_words(zh_shards) -> None:
    tokenizer = zh_shards.tokenizer()
    vocab = Vocab(tokenizer.vocab_size, tokenizer.special, tokenizer.word_start_table())
    sentence = "使用语言模型来预测下一个词"
    objective = get_objective("wwm")(vocab, len(sentence) + 2)  # a budget of 2 characters
    window = zh_shards.window(0, len(sentence))
    assert tokenizer.decode(window.tokens) == sentence
    starts = objective.word_starts(window)[1:-1]
    assert starts.astype(int).tolist() == [1, 0, 1, 0, 1, 0, 1, 1, 0, 1, 1, 0, 1]
    word_of = np.cumsum(starts) - 1
    masked = set()
    for seed in range(100):
        chosen = objective.make_example(window, np.random.default_rng(seed))["labels"][1:-1] != IGNORE
        touched = np.unique(word_of[chosen])
        assert (chosen == np.isin(word_of, touched)).all(), "only whole words are masked"
        masked.update("".join(sentence[i] for i in np.flatnonzero(word_of == w)) for w in touched)
    assert masked == {"使用", "语言", "模型", "来", "预测", "下", "一个", "词"}


def test_chinese_masking_never_splits_a_jieba_word(zh_shards) -> None:
    tokenizer = zh_shards.tokenizer()
    vocab = Vocab(tokenizer.vocab_size, tokenizer.special, tokenizer.word_start_table())
    objective = get_objective("wwm")(vocab, 34)
    rng = np.random.default_rng(0)
    for i in range(zh_shards.n_windows(objective.window_length())):
        window = zh_shards.window(i, objective.window_length())
        starts = objective.word_starts(window)
        ex = objective.make_example(window, rng)
        chosen = ex["labels"] != IGNORE
        pairs = glued(starts, ~np.isin(objective.frame(window), list(vocab.special.all())))
        assert (chosen[:-1][pairs] == chosen[1:][pairs]).all()


EN = ["The model predicts the next word.", "Paris is the capital of France."] * 20


def _shards(tmp_path, texts: list[str], kind: str) -> TokenShards:
    tmp_path.mkdir(exist_ok=True)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(texts) + "\n")
    tokenizer = train_tokenizer(texts, kind=kind, vocab_size=300, min_frequency=1, show_progress=False)
    prepare([corpus], tokenizer, tmp_path / "d", val_fraction=0.0, progress=False)
    return TokenShards(tmp_path / "d")


@pytest.mark.parametrize("kind", ["char", "wordpiece", "unigram"])
def test_unsegmented_chinese_gets_a_hint_naming_the_segmenter(tmp_path, kind) -> None:
    shards = _shards(tmp_path, ZH, kind)
    tokenizer = shards.tokenizer()
    warning = get_objective("wwm")(Vocab.of(tokenizer), 32).data_warning(shards, tokenizer)
    assert warning is not None and "--segment jieba" in warning and str(shards.directory) in warning


def test_pretraining_wwm_on_unsegmented_chinese_warns(tmp_path) -> None:
    import ptmkit
    data = _shards(tmp_path, ZH * 4, "char").directory
    with pytest.warns(UserWarning, match="prepare it with `ptmkit prepare --segment jieba`"):
        ptmkit.pretrain(objective="wwm", data=str(data), out=str(tmp_path / "run"), steps=1, batch_size=2,
                        seq_len=32, workers=0, progress=False,
                        model={"n_layers": 1, "hidden": 16, "heads": 2, "max_positions": 64})


def test_segmented_chinese_and_spaced_text_need_no_hint(tmp_path, zh_shards) -> None:
    objective = get_objective("wwm")
    assert objective(Vocab.of(zh_shards.tokenizer()), 32).data_warning(zh_shards, zh_shards.tokenizer()) is None
    english = _shards(tmp_path, EN, "wordpiece")
    assert objective(Vocab.of(english.tokenizer()), 32).data_warning(english, english.tokenizer()) is None
    unsegmented = _shards(tmp_path / "zh", ZH, "char")
    tokenizer = unsegmented.tokenizer()
    assert get_objective("mlm")(Vocab.of(tokenizer), 32).data_warning(unsegmented, tokenizer) is None
