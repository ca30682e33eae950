"""Prepared token shards: round trip, boundaries, split, dtype, atomic output."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from ptmkit.data.corpus import read_documents
from ptmkit.data.segment import segment_word_starts
from ptmkit.data.shards import (MIN_DOCUMENTS_FOR_FALLBACK, TokenShards, _is_validation, corpus_fingerprint,
                                prepare)
from ptmkit.data.tokenizer import train_tokenizer
from ptmkit.errors import UserError

DOCS = [
    "The cat sat on the mat. It was a sunny day. Birds sang.",
    "Prices rose sharply in March. Analysts were surprised.",
    "A short one.",
    "Rivers flow to the sea. The sea is salty. Rain refills the rivers. Clouds carry the rain.",
] * 30


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "docs.txt"
    path.write_text("\n\n".join(DOCS) + "\n")
    return path


@pytest.fixture(scope="module")
def tokenizer(corpus):
    return train_tokenizer([d for d in DOCS], kind="bpe", vocab_size=500, show_progress=False)


def test_round_trip_keeps_every_document_and_sentence(corpus, tokenizer, tmp_path) -> None:
    manifest = prepare([corpus], tokenizer, tmp_path / "d", val_fraction=0.2, progress=False)
    documents = list(read_documents([corpus]))
    counts = manifest["splits"]
    assert counts["train"]["documents"] + counts["val"]["documents"] == len(documents) == len(DOCS)
    assert counts["val"]["documents"] > 0
    # every document, in corpus order, in the split its index hashes to, sentence by sentence
    expected: dict[str, list] = {"train": [], "val": []}
    for index, document in enumerate(documents):
        split = "val" if _is_validation(index, 0.2, 0) else "train"
        expected[split].append([tokenizer.encode(s) for s in document.sentences])
    for split in ("train", "val"):
        shards = TokenShards(tmp_path / "d", split)
        assert shards.tokens.dtype == np.uint16
        assert len(shards.document_offsets) - 1 == counts[split]["documents"]
        assert stored_documents(shards) == expected[split]


def stored_documents(shards: TokenShards) -> list[list[list[int]]]:
    """Each stored document as its sentences' token ids, checking the offsets on the way."""
    docs, sents = shards.document_offsets, shards.sentence_offsets
    assert docs[-1] == sents[-1] == len(shards)
    assert set(docs).issubset(set(sents)), "every document starts a sentence"
    stored = []
    for a, b in zip(docs[:-1], docs[1:]):
        inner = sents[(sents >= a) & (sents <= b)]
        stored.append([shards.tokens[x:y].tolist() for x, y in zip(inner[:-1], inner[1:])])
    return stored


@pytest.mark.parametrize("batch_documents", [5, 256])
def test_a_corpus_the_hash_gives_no_validation_keeps_its_last_document_there(tokenizer, tmp_path,
                                                                             batch_documents) -> None:
    fraction, n = 0.001, MIN_DOCUMENTS_FOR_FALLBACK + 2
    assert not any(_is_validation(i, fraction, 0) for i in range(n)), "the hash must pick none here"
    corpus = tmp_path / "few.txt"
    corpus.write_text("\n\n".join(DOCS[:n]) + "\n")
    manifest = prepare([corpus], tokenizer, tmp_path / "d", val_fraction=fraction, progress=False,
                       batch_documents=batch_documents)
    assert manifest["splits"]["val"]["documents"] == 1
    encoded = [[tokenizer.encode(s) for s in document.sentences] for document in read_documents([corpus])]
    assert stored_documents(TokenShards(tmp_path / "d", "val")) == encoded[-1:]
    assert stored_documents(TokenShards(tmp_path / "d", "train")) == encoded[:-1], "order kept"


def test_small_corpora_and_a_zero_fraction_keep_every_document_for_training(tokenizer, tmp_path) -> None:
    few = tmp_path / "few.txt"
    few.write_text("\n\n".join(DOCS[:MIN_DOCUMENTS_FOR_FALLBACK - 1]) + "\n")
    many = tmp_path / "many.txt"
    many.write_text("\n\n".join(DOCS[:MIN_DOCUMENTS_FOR_FALLBACK + 5]) + "\n")
    for corpus, fraction in ((few, 0.001), (many, 0.0)):
        manifest = prepare([corpus], tokenizer, tmp_path / corpus.stem / str(fraction), val_fraction=fraction,
                           progress=False)
        assert manifest["splits"]["val"]["documents"] == 0


def test_windows_report_the_boundaries_inside_them(corpus, tokenizer, tmp_path) -> None:
    prepare([corpus], tokenizer, tmp_path / "d", val_fraction=0.0, progress=False)
    shards = TokenShards(tmp_path / "d")
    length = 16
    for i in range(shards.n_windows(length)):
        w = shards.window(i, length)
        start = i * length
        assert (w.tokens == shards.tokens[start:start + length]).all()
        assert set(w.sentence_starts + start) == {s for s in shards.sentence_offsets if start <= s < start + length}
        assert set(w.document_starts + start) == {s for s in shards.document_offsets if start <= s < start + length}


def test_split_is_deterministic(corpus, tokenizer, tmp_path) -> None:
    a = prepare([corpus], tokenizer, tmp_path / "a", val_fraction=0.3, progress=False)
    b = prepare([corpus], tokenizer, tmp_path / "b", val_fraction=0.3, progress=False)
    assert a["splits"] == b["splits"]
    assert (tmp_path / "a" / "val.bin").read_bytes() == (tmp_path / "b" / "val.bin").read_bytes()


def test_output_is_atomic_and_protected(corpus, tokenizer, tmp_path) -> None:
    out = tmp_path / "d"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        prepare([corpus], tokenizer, out, progress=False)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(UserError):
        prepare([empty], tokenizer, tmp_path / "e", progress=False)
    assert not (tmp_path / "e").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temporary left behind"


def test_an_output_linked_to_a_directory_is_written_where_it_points(corpus, tokenizer, tmp_path) -> None:
    """Replacing it used to stop, after all the tokenization, on rmtree of a link."""
    real, link = tmp_path / "real", tmp_path / "link"
    real.mkdir()
    link.symlink_to(real)
    for overwrite in (False, True):
        prepare([corpus], tokenizer, link, overwrite=overwrite, progress=False)
        assert link.is_symlink() and (real / "manifest.json").is_file()
    assert len(TokenShards(link)) > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"], "nothing left aside"


def test_failed_input_leaves_no_new_parent_directories(corpus, tokenizer, tmp_path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "Fine."}\n{broken\n')
    with pytest.raises(UserError, match="malformed JSON line"):
        prepare([bad], tokenizer, tmp_path / "new" / "deep" / "d", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl"]
    prepare([corpus], tokenizer, tmp_path / "new" / "deep" / "d", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "new"]
    assert [p.name for p in (tmp_path / "new" / "deep").iterdir()] == ["d"]


def test_an_interrupted_overwrite_keeps_the_old_output(corpus, tokenizer, tmp_path, monkeypatch) -> None:
    """The old output used to be deleted before the new one was renamed in."""
    out = tmp_path / "d"
    prepare([corpus], tokenizer, out, val_fraction=0.2, progress=False)
    before = (out / "manifest.json").read_text()
    replace, interrupted = os.replace, []

    def ctrl_c_before_the_new_output_is_in(source, destination) -> None:
        if os.path.realpath(destination) == os.path.realpath(out) and not interrupted:
            interrupted.append(source)
            raise KeyboardInterrupt
        replace(source, destination)

    monkeypatch.setattr(os, "replace", ctrl_c_before_the_new_output_is_in)
    with pytest.raises(KeyboardInterrupt):
        prepare([corpus], tokenizer, out, val_fraction=0.3, overwrite=True, progress=False)
    monkeypatch.undo()
    assert interrupted and (out / "manifest.json").read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["d"], "no temporary left behind"


def test_overwrite_never_deletes_what_the_run_reads(corpus, tokenizer, tmp_path) -> None:
    """`prepare --corpus d/e.txt --tokenizer d/tok --out d --overwrite` used to replace d, corpus
    and tokenizer included, by the shards."""
    data = tmp_path / "d"
    (data / "tok").mkdir(parents=True)
    shutil.copyfile(corpus, data / "e.txt")
    with pytest.raises(UserError, match="--overwrite would delete .*e.txt"):
        prepare([data / "e.txt"], tokenizer, data, overwrite=True, progress=False)
    with pytest.raises(UserError, match="--overwrite would delete .*tok"):
        prepare([corpus], tokenizer, data, overwrite=True, progress=False, inputs=[data / "tok"])
    assert sorted(p.name for p in data.iterdir()) == ["e.txt", "tok"]


def test_bad_windows_and_outputs_under_a_file_are_user_errors(corpus, tokenizer, tmp_path) -> None:
    with pytest.raises(UserError, match="--seq-len 0 holds no token"):
        prepare([corpus], tokenizer, tmp_path / "d", seq_len=0, progress=False)
    with pytest.raises(UserError, match="output path is, or lies under, a file"):
        prepare([corpus], tokenizer, corpus / "data", progress=False)
    assert not (tmp_path / "d").exists()


def test_shards_pickle_as_their_place_not_their_tokens(corpus, tokenizer, tmp_path) -> None:
    """A DataLoader worker started by spawn (macOS) gets the shards pickled: it re-maps the files
    instead of receiving a copy of every token."""
    import pickle
    prepare([corpus], tokenizer, tmp_path / "d", val_fraction=0.0, progress=False)
    shards = TokenShards(tmp_path / "d")
    copy = pickle.loads(pickle.dumps(shards))
    assert len(pickle.dumps(shards)) < 500 < shards.tokens.nbytes
    for got, want in zip(vars(copy.window(2, 16)).values(), vars(shards.window(2, 16)).values()):
        assert np.array_equal(got, want)
    assert isinstance(copy.tokens, np.memmap)


def test_damaged_prepared_data_is_a_user_error(corpus, tokenizer, tmp_path) -> None:
    prepare([corpus], tokenizer, tmp_path / "d", progress=False)
    (tmp_path / "d" / "train.bin").unlink()
    with pytest.raises(UserError, match="damaged prepared data .*run `ptmkit prepare` again"):
        TokenShards(tmp_path / "d")
    (tmp_path / "d" / "manifest.json").write_text('{"format": ')
    with pytest.raises(UserError, match="damaged prepared data"):
        TokenShards(tmp_path / "d")


def test_manifest_records_tokenizer_and_counts(corpus, tokenizer, tmp_path) -> None:
    prepare([corpus], tokenizer, tmp_path / "d", progress=False)
    manifest = json.loads((tmp_path / "d" / "manifest.json").read_text())
    assert manifest["tokenizer_sha256"] == tokenizer.sha256()
    assert manifest["vocab_size"] == tokenizer.vocab_size
    assert TokenShards(tmp_path / "d").tokenizer().sha256() == tokenizer.sha256()


def test_not_prepared_directory_is_a_user_error(tmp_path) -> None:
    with pytest.raises(UserError, match="ptmkit prepare"):
        TokenShards(tmp_path)


ZH_DOCS = ["使用语言模型来预测下一个词。北京是中国的首都。", "我们一起去公园散步吧。今天天气很好。"] * 20


def test_jieba_segmentation_is_stored_per_token_and_windowed(tmp_path) -> None:
    corpus = tmp_path / "zh.txt"
    corpus.write_text("\n\n".join(ZH_DOCS) + "\n")
    tokenizer = train_tokenizer(ZH_DOCS, kind="char", vocab_size=300, min_frequency=1, show_progress=False)
    manifest = prepare([corpus], tokenizer, tmp_path / "d", val_fraction=0.0, progress=False,
                       segment="jieba")
    assert manifest["segment"] == "jieba"
    shards = TokenShards(tmp_path / "d")
    assert len(shards.word_starts) == len(shards)
    sentence = "使用语言模型来预测下一个词"  # jieba: 使用/语言/模型/来/预测/下/一个/词
    text = tokenizer.decode(shards.tokens[: len(sentence)])
    assert text == sentence
    window = shards.window(0, 16)
    assert window.word_starts.dtype == bool and len(window.word_starts) == 16
    assert window.word_starts[: len(sentence)].astype(int).tolist() == [1, 0, 1, 0, 1, 0, 1, 1, 0, 1, 1, 0, 1]
    assert (shards.word_starts[shards.sentence_offsets[:-1]] == 1).all(), "a sentence starts a word"


def test_the_held_out_last_document_keeps_its_word_starts(tmp_path) -> None:
    corpus = tmp_path / "zh.txt"
    corpus.write_text("\n\n".join(ZH_DOCS) + "\n")
    tokenizer = train_tokenizer(ZH_DOCS, kind="char", vocab_size=300, min_frequency=1, show_progress=False)
    manifest = prepare([corpus], tokenizer, tmp_path / "d", val_fraction=1e-4, progress=False,
                       segment="jieba", batch_documents=7)
    assert manifest["splits"]["val"]["documents"] == 1
    whole = prepare([corpus], tokenizer, tmp_path / "whole", val_fraction=0.0, progress=False, segment="jieba")
    train, val, reference = (TokenShards(tmp_path / d, split) for d, split in
                             (("d", "train"), ("d", "val"), ("whole", "train")))
    assert whole["splits"]["train"]["tokens"] == len(train) + len(val)
    assert (np.concatenate([train.word_starts, val.word_starts]) == reference.word_starts).all()


def test_jieba_words_match_subword_tokens_through_offsets(tokenizer) -> None:
    """With a sub-word tokenizer the jieba words of English text are its whitespace words: a
    split rare word continues, a bpe token carrying the space before a word starts it."""
    texts = ["The cat sat on the zqxjkvwq mat.", "Prices rose  sharply, in March."]
    starts = segment_word_starts(tokenizer, texts, "jieba")
    assert [row.tolist() for row in starts] == [list(map(int, row)) for row in tokenizer.word_starts(texts)]
    assert starts[0].tolist().count(0) == len(tokenizer.encode("zqxjkvwq")) - 1


def test_word_starts_absent_unless_segmented(corpus, tokenizer, tmp_path) -> None:
    manifest = prepare([corpus], tokenizer, tmp_path / "d", progress=False)
    assert manifest["segment"] is None and not list((tmp_path / "d").glob("*.word_starts.bin"))
    assert TokenShards(tmp_path / "d").window(0, 8).word_starts is None
    with pytest.raises(UserError, match="segmenter"):
        prepare([corpus], tokenizer, tmp_path / "e", progress=False, segment="ltp")


def test_fingerprint_follows_content_not_path_or_mtime(corpus, tokenizer, tmp_path) -> None:
    # A corpus copied elsewhere or re-mounted (new mtime) keeps its prepared data and every
    # pre-training keyed on it; one changed byte invalidates them.
    copy = tmp_path / "moved" / "corpus.txt"
    copy.parent.mkdir()
    shutil.copyfile(corpus, copy)
    os.utime(copy, (1, 1))
    assert corpus_fingerprint([copy], tokenizer) == corpus_fingerprint([corpus], tokenizer)
    copy.write_bytes(copy.read_bytes().replace(b"e", b"E", 1))
    assert corpus_fingerprint([copy], tokenizer) != corpus_fingerprint([corpus], tokenizer)
    assert corpus_fingerprint([corpus], tokenizer, seq_len=64) != corpus_fingerprint([corpus], tokenizer)
    # the same bytes named .tsv are a table: other documents, so other prepared data
    table = tmp_path / "moved" / "corpus.tsv"
    shutil.copyfile(corpus, table)
    assert corpus_fingerprint([table], tokenizer) != corpus_fingerprint([corpus], tokenizer)


def test_sentences_and_documents_that_encode_to_nothing_are_dropped(tmp_path) -> None:
    # a lone combining accent is a sentence to the splitter but no token to WordPiece
    path = tmp_path / "docs.txt"
    path.write_text("The cat sat.\n\u0301\nThe mat.\n\n\u0301\n\nA dog. \u0301\n")
    tokenizer = train_tokenizer(["The cat sat on the mat. A dog."] * 20, kind="wordpiece",
                                vocab_size=300, show_progress=False)
    manifest = prepare([path], tokenizer, tmp_path / "d", val_fraction=0.0, progress=False, batch_documents=2)
    assert manifest["splits"]["train"] == {"tokens": 10, "documents": 2, "sentences": 3}
    shards = TokenShards(tmp_path / "d")
    sentences = [tokenizer.decode(shards.tokens[a:b].tolist()) for a, b in
                 zip(shards.sentence_offsets[:-1], shards.sentence_offsets[1:])]
    assert sentences == ["the cat sat.", "the mat.", "a dog."]
    assert shards.document_offsets.tolist() == [0, 7, 10]
