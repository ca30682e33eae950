"""word2vec through gensim: the word stream, the per-epoch loss, the outputs and their alignment."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from gensim.models import KeyedVectors
from safetensors.numpy import load_file

from ptmkit.data.corpus import read_documents
from ptmkit.data.shards import TokenShards, prepare
from ptmkit.data.tokenizer import train_tokenizer
from ptmkit.errors import UserError
from ptmkit.objectives import get_objective
from ptmkit.objectives.base import Vocab
from ptmkit.objectives.word2vec import (ShardSentences, effective_min_count, epoch_alphas,
                                        split_words, token_keys, token_word)
from ptmkit.train.loop import TrainConfig

HAND_CORPUS = ("The cat sat on the mat. A dog barked at the cat!\n"
               "Nobody expected it, but the dog won.\n"
               "Word vectors learn from contexts. Contexts are windows of 5 words?\n")


@pytest.mark.parametrize("kind", ["bpe", "wordpiece", "unigram"])
def test_streams_the_corpus_sentences(tmp_path: Path, kind: str) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(HAND_CORPUS)
    tokenizer = train_tokenizer([HAND_CORPUS], kind=kind, vocab_size=500, show_progress=False)
    prepare([corpus], tokenizer, tmp_path / "data", val_fraction=0.0, progress=False)
    shards = TokenShards(tmp_path / "data")
    sentences = [s for doc in read_documents([corpus]) for s in doc.sentences]
    assert len(sentences) >= 5
    assert list(ShardSentences(shards, tokenizer, "words")) == [split_words(s) for s in sentences]
    pieces = [[tokenizer.hf.id_to_token(i) for i in tokenizer.encode(s)] for s in sentences]
    assert list(ShardSentences(shards, tokenizer, "tokens")) == pieces


def test_words_are_lowercase_alphabetic_of_any_length() -> None:
    assert split_words("A dog's 3 internationalisations, Ünïcode!") == [
        "a", "dog", "s", "internationalisations", "ünïcode"]


def test_min_count_is_lowered_only_for_small_vocabularies() -> None:
    tiny = Counter({"a": 3, "b": 1})
    large = Counter({f"w{i}": 5 + i % 3 for i in range(2000)} | {"rare": 1})
    assert effective_min_count(tiny, 0) == 1
    assert effective_min_count(large, 0) == 5
    assert effective_min_count(tiny, 7) == 7


def test_learning_rate_decays_linearly_across_epochs() -> None:
    spans = [epoch_alphas(0.025, 1e-4, 4, e) for e in range(4)]
    assert spans[0][0] == 0.025 and spans[-1][1] == pytest.approx(1e-4)
    assert all(a[1] == pytest.approx(b[0]) for a, b in zip(spans, spans[1:]))


def test_under_a_time_budget_the_learning_rate_decays_over_the_wall_clock() -> None:
    """`--max-minutes` alone: epochs are unbounded, the clock is the run's progress."""
    epochs = 10**8
    first = epoch_alphas(0.025, 1e-4, epochs, 0, budget=60.0)
    halfway = epoch_alphas(0.025, 1e-4, epochs, 5, elapsed=30.0, budget=60.0, epoch_seconds=6.0)
    last = epoch_alphas(0.025, 1e-4, epochs, 9, elapsed=58.0, budget=60.0, epoch_seconds=6.0)
    assert first[0] == 0.025
    assert halfway == (pytest.approx(0.025 - 0.0249 * 0.5), pytest.approx(0.025 - 0.0249 * 0.6))
    assert last[1] == pytest.approx(1e-4)  # the epoch the clock ends in ends at min_alpha


def test_bad_options_are_user_errors(vocab: Vocab) -> None:
    with pytest.raises(UserError, match="mode"):
        get_objective("word2vec")(vocab, 64, {"mode": "glove"})
    with pytest.raises(UserError, match="unit"):
        get_objective("word2vec")(vocab, 64, {"unit": "chars"})


def _train(shards: TokenShards, run: Path, steps: int, seed: int = 0, **options) -> dict:
    tokenizer = shards.tokenizer()
    objective = get_objective("word2vec")(Vocab(tokenizer.vocab_size, tokenizer.special), 64, options)
    run.mkdir()
    return objective.train_standalone(shards, tokenizer, run, TrainConfig(steps=steps, seed=seed), False)


@pytest.fixture(scope="module")
def skipgram_run(lee_shards: TokenShards, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    run = tmp_path_factory.mktemp("w2v") / "run"
    return run, _train(lee_shards, run, steps=10)


def test_per_epoch_loss_is_logged_and_falls(skipgram_run) -> None:
    run, summary = skipgram_run
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == list(range(1, 11)) and summary["steps"] == 10
    losses = [line["loss"] for line in lines]
    assert np.mean(losses[-3:]) < 0.9 * np.mean(losses[:3])
    assert all(b["lr"] < a["lr"] for a, b in zip(lines, lines[1:]))
    assert lines[-1]["tokens"] == summary["tokens"] > 0


def test_outputs_load_and_the_embedding_is_aligned_to_the_tokenizer(skipgram_run, lee_shards) -> None:
    run, summary = skipgram_run
    kv = KeyedVectors.load_word2vec_format(str(run / "vectors.txt"))
    assert len(kv) == summary["vocabulary"] > 500 and kv.vector_size == 100
    tokenizer = lee_shards.tokenizer()
    embedding = load_file(str(run / "model.safetensors"))["embedding"]
    assert embedding.shape == (tokenizer.vocab_size, 100) and embedding.dtype == np.float32
    words = {i: token_word(tokenizer, i) for i in range(tokenizer.vocab_size)}
    aligned = [i for i, w in words.items() if w is not None and w in kv]
    assert len(aligned) > 100  # whole-word tokens of a 1000-id BPE that word2vec kept
    for i in aligned:
        np.testing.assert_allclose(embedding[i], kv[words[i]], atol=1e-5)
    assert words[tokenizer.encode("the")[0]] == "the"
    assert summary["coverage"]["vocab_rows"] == pytest.approx(len(aligned) / tokenizer.vocab_size)


def test_intrinsic_scores_are_numbers(skipgram_run) -> None:
    run, summary = skipgram_run
    scores = json.loads((run / "eval.json").read_text())
    for name in ("wordsim353", "simlex999"):
        assert isinstance(scores[name]["spearman"], float)
        assert 0 <= scores[name]["oov_ratio"] < 1
    assert 0 <= scores["analogy"]["accuracy"] <= 1 and scores["analogy"]["answered"] > 0
    assert 0 < scores["coverage"]["corpus_tokens"] <= 1
    assert summary["wordsim353_spearman"] == scores["wordsim353"]["spearman"]


def test_cbow_on_tokens(lee_shards: TokenShards, tmp_path: Path) -> None:
    summary = _train(lee_shards, tmp_path / "run", steps=2, mode="cbow", unit="tokens", vector_size=20)
    kv = KeyedVectors.load_word2vec_format(str(tmp_path / "run" / "vectors.txt"))
    tokenizer = lee_shards.tokenizer()
    keys = token_keys(tokenizer, "tokens")
    embedding = load_file(str(tmp_path / "run" / "model.safetensors"))["embedding"]
    known = [i for i, key in enumerate(keys) if key in kv]
    assert len(known) > 500 and summary["unit"] == "tokens"
    np.testing.assert_allclose(embedding[known], kv[[keys[i] for i in known]], atol=1e-5)
    assert np.isfinite(summary["final_loss"])


def test_one_worker_and_a_seed_reproduce_the_vectors(lee_shards: TokenShards, tmp_path: Path) -> None:
    def vectors(name: str, seed: int) -> np.ndarray:
        _train(lee_shards, tmp_path / name, steps=2, seed=seed, vector_size=20)
        return load_file(str(tmp_path / name / "model.safetensors"))["embedding"]

    first = vectors("a", 0)
    np.testing.assert_array_equal(first, vectors("b", 0))
    assert not np.array_equal(first, vectors("c", 1))


def test_word_vectors_initialise_a_transformer_objective(lee_shards: TokenShards, tmp_path: Path) -> None:
    """`pretrain --init W2V_RUN`: the token embedding starts as the word vectors, rescaled."""
    from ptmkit.pretraining import PretrainSpec, pretrain
    data = lee_shards.directory
    pretrain(PretrainSpec(objective="word2vec", out=tmp_path / "w2v", data=data, progress=False,
                          objective_options={"unit": "tokens", "vector_size": 128},
                          train=TrainConfig(steps=1)))
    pretrain(PretrainSpec(objective="mlm", out=tmp_path / "mlm", data=data, model="tiny", progress=False,
                          init=str(tmp_path / "w2v"), train=TrainConfig(steps=1, lr=1e-9, batch_size=4,
                                                                          seq_len=32, warmup=1)))
    vectors = load_file(str(tmp_path / "w2v" / "model.safetensors"))["embedding"]
    embedding = load_file(str(tmp_path / "mlm" / "model.safetensors"))["embed.tokens.weight"]
    assert np.std(embedding) == pytest.approx(0.02, rel=0.05)  # the transformer's own init scale
    def cosine(a: np.ndarray) -> np.ndarray:
        return a @ a.T / np.outer(np.linalg.norm(a, axis=1), np.linalg.norm(a, axis=1))
    pick = np.flatnonzero(np.abs(vectors).sum(1) > 0)[:200]
    centred = vectors - vectors.mean()
    np.testing.assert_allclose(cosine(embedding[pick]), cosine(centred[pick]), atol=1e-3)
    with pytest.raises(UserError, match="vector_size: 256"):
        pretrain(PretrainSpec(objective="mlm", out=tmp_path / "mini", data=data, model="mini", progress=False,
                              init=str(tmp_path / "w2v"), train=TrainConfig(steps=1, batch_size=4, seq_len=32)))
    assert not (tmp_path / "mini").exists()


@pytest.fixture(scope="module")
def polarity_shards(lee_shards: TokenShards, tmp_path_factory: pytest.TempPathFactory) -> TokenShards:
    """Movie-review sentences (gensim's Pang & Lee file) with the Lee tokenizer: a second corpus
    that shares many words with the news and has words of its own."""
    import gensim
    source = Path(gensim.__file__).parent / "test" / "test_data" / "pang_lee_polarity.cor"
    root = tmp_path_factory.mktemp("polarity")
    text = root / "polarity.txt"  # the file is latin-1, each line "LABEL sentence"
    text.write_text("".join(line.split(" ", 1)[-1] + "\n" for line in source.read_text("latin-1").splitlines()))
    out = root / "data"
    prepare([text], lee_shards.tokenizer(), out, val_fraction=0.0, progress=False)
    return TokenShards(out, "train")


def _pretrain_w2v(data: Path, out: Path, init: Path | None = None, **options) -> dict:
    from ptmkit.pretraining import PretrainSpec, pretrain
    return pretrain(PretrainSpec(objective="word2vec", out=out, data=data, progress=False,
                                 init=str(init) if init else None, train=TrainConfig(steps=2),
                                 objective_options={"vector_size": 20, **options}))


def test_init_continues_the_general_vectors_on_a_second_corpus(lee_shards, polarity_shards, tmp_path) -> None:
    """Path C for word2vec: the vocabulary is the union, words the second corpus never shows keep
    the first run's vectors exactly, and at a vanishing learning rate nothing else moves either."""
    general, domain, fresh = tmp_path / "general", tmp_path / "domain", tmp_path / "fresh"
    _pretrain_w2v(lee_shards.directory, general)
    _pretrain_w2v(polarity_shards.directory, domain, init=general, alpha=2e-6, min_alpha=1e-6)
    _pretrain_w2v(polarity_shards.directory, fresh)
    before, after, alone = (KeyedVectors.load_word2vec_format(str(run / "vectors.txt"))
                            for run in (general, domain, fresh))
    shown = {word for sentence in ShardSentences(polarity_shards, polarity_shards.tokenizer(), "words")
             for word in sentence}
    kept = [w for w in before.index_to_key if w not in shown]
    shared = [w for w in before.index_to_key if w in shown]
    added = [w for w in after.index_to_key if w not in before]
    assert len(kept) > 1000 and len(shared) > 100 and added and set(added) <= shown
    assert set(after.index_to_key) == set(before.index_to_key) | set(added)
    np.testing.assert_allclose(after[kept], before[kept], atol=1e-5)
    np.testing.assert_allclose(after[shared], before[shared], atol=1e-3)
    assert not np.allclose(alone[shared], before[shared], atol=1e-3)  # without --init: a fresh start
    counts = load_file(str(domain / "context.safetensors"))["counts"]
    general_counts = load_file(str(general / "context.safetensors"))["counts"]
    assert counts.sum() > general_counts.sum() and counts[after.key_to_index[kept[0]]] == \
        general_counts[before.key_to_index[kept[0]]]


def test_init_must_be_a_word2vec_run_of_the_same_shape(lee_shards, tmp_path) -> None:
    from ptmkit.pretraining import PretrainSpec, pretrain
    data = lee_shards.directory
    _pretrain_w2v(data, tmp_path / "w2v")
    with pytest.raises(UserError, match="vector_size 20, this one 30") as err:
        _pretrain_w2v(data, tmp_path / "wide", init=tmp_path / "w2v", vector_size=30)
    assert err.value.where == "objective_options.vector_size" and not (tmp_path / "wide").exists()
    pretrain(PretrainSpec(objective="mlm", out=tmp_path / "mlm", data=data, model="tiny", progress=False,
                          train=TrainConfig(steps=1, batch_size=4, seq_len=32)))
    with pytest.raises(UserError, match="word2vec continues a word2vec run; .* is a mlm run"):
        _pretrain_w2v(data, tmp_path / "again", init=tmp_path / "mlm")
    assert not (tmp_path / "again").exists()
