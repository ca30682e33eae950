"""Tests for ptmkit.data.tokenizer: trainable tokenizers with fixed special-token ids."""

from __future__ import annotations

import hashlib
import json
import unicodedata
from pathlib import Path

import gensim
import pytest
import tokenizers
from hypothesis import given, settings
from hypothesis import strategies as st

from ptmkit.data import tokenizer as tokenizer_module
from ptmkit.data.tokenizer import (
    ALL_SPECIAL_TOKENS,
    KINDS,
    N_SENTINELS,
    OWN_SPECIAL_IDS,
    SPECIAL_TOKENS,
    SpecialIds,
    Tokenizer,
    minimum_vocab_size,
    train_tokenizer,
)
from ptmkit.errors import UserError

LEE = (Path(gensim.__file__).parent / "test/test_data/lee_background.cor").read_text(encoding="utf-8").splitlines()

ZH = """\
今天天气很好，我们一起去公园散步吧。
北京是中华人民共和国的首都，也是全国的政治和文化中心。
机器学习是人工智能的一个重要分支，它研究计算机如何从数据中学习。
我喜欢在周末读书、喝茶，偶尔也会去看一场电影。
长江是中国最长的河流，全长约六千三百公里。
这家餐厅的饺子非常好吃，价格也很便宜。
他每天早上六点起床，先跑步半个小时，然后吃早饭。
语言模型通过预测下一个词来学习语言的规律。
春节是中国最重要的传统节日，家家户户都会贴春联、放鞭炮。
请把窗户打开，房间里太闷了。
小明的妈妈是一名医生，在市中心的医院工作。
深度学习需要大量的数据和强大的计算资源。
我们应该保护环境，减少塑料袋的使用。
这本小说讲述了一个关于友谊和勇气的故事。
上海的地铁四通八达，出行非常方便。
昨天晚上下了一场大雨，路上到处都是积水。
学习中文最难的部分是汉字的书写。
她在大学里学的是经济学，毕业后进入了一家银行。
熊猫是中国的国宝，主要生活在四川的山区。
老师告诉我们，做事情要有耐心，不能半途而废。
这个周末我打算和朋友们一起去爬山。
互联网改变了人们的生活方式和交流方式。
秋天到了，树上的叶子慢慢变黄了。
他的中文说得很流利，一点儿也听不出是外国人。
医生建议我多喝水，多休息，少吃辛辣的食物。
图书馆里很安静，大家都在认真地看书。
火车站离这里不远，走路大概十分钟就到了。
自然语言处理包括分词、词性标注、句法分析等任务。
我的手机没电了，能借你的充电器用一下吗？
西湖的风景非常美丽，每年吸引了大量的游客。
孩子们在操场上踢足球，玩得非常开心。
这个问题很复杂，我们需要再讨论一下。
""".splitlines()

CORPORA = {"en": (LEE, 2000, 2), "zh": (ZH, 1000, 1)}  # texts, vocab_size, min_frequency
CASES = [(kind, lang) for kind in KINDS for lang in CORPORA]
EXPECTED_SPECIALS = list(SPECIAL_TOKENS) + [f"<extra_id_{i}>" for i in range(N_SENTINELS)]


def _squash(text: str) -> str:
    """NFKC, no whitespace, lowercase, no accents: what every kind preserves."""
    text = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", text).lower())
    return "".join(c for c in text if not c.isspace() and not unicodedata.combining(c))


@pytest.fixture(scope="session")
def trained():
    cache: dict[tuple[str, str], Tokenizer] = {}

    def get(kind: str, lang: str) -> Tokenizer:
        if (kind, lang) not in cache:
            texts, vocab_size, min_frequency = CORPORA[lang]
            cache[kind, lang] = train_tokenizer(
                texts, kind=kind, vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False
            )
        return cache[kind, lang]

    return get


# -- special tokens -------------------------------------------------------------------------------


def test_special_token_table():
    assert list(ALL_SPECIAL_TOKENS) == EXPECTED_SPECIALS
    assert len(ALL_SPECIAL_TOKENS) == 107


@pytest.mark.parametrize("kind,lang", CASES)
def test_special_ids_are_0_to_106_with_the_right_strings(trained, kind, lang):
    tok = trained(kind, lang)
    for i, token in enumerate(EXPECTED_SPECIALS):
        assert tok.hf.token_to_id(token) == i
        assert tok.hf.id_to_token(i) == token
    sp = tok.special
    assert (sp.pad, sp.unk, sp.cls, sp.sep, sp.mask, sp.bos, sp.eos) == (0, 1, 2, 3, 4, 5, 6)
    assert sp.sentinels == tuple(range(7, 107))
    assert sp.all() == frozenset(range(107))
    assert isinstance(sp, SpecialIds)


@pytest.mark.parametrize("kind,lang", CASES)
def test_vocab_size_within_request_and_encode_has_no_specials(trained, kind, lang):
    texts, vocab_size, _ = CORPORA[lang]
    tok = trained(kind, lang)
    assert 107 < tok.vocab_size <= vocab_size
    assert tok.vocab_size == tok.hf.get_vocab_size(with_added_tokens=True)
    ids = tok.encode_batch(texts)
    assert ids == [tok.encode(t) for t in texts]
    flat = [i for row in ids for i in row]
    assert flat and all(0 <= i < tok.vocab_size for i in flat)
    if kind == "char" and lang == "en":  # min_frequency=2 drops a few rare characters to [UNK]
        assert not set(flat) & (tok.special.all() - {tok.special.unk})
    else:
        assert not set(flat) & tok.special.all()


@pytest.mark.parametrize("kind,lang", CASES)
def test_special_strings_in_raw_text_stay_ordinary_text(trained, kind, lang):
    tok = trained(kind, lang)
    raw = " ".join(ALL_SPECIAL_TOKENS) + " x" + "".join(ALL_SPECIAL_TOKENS[:8]) + "[MASK]y"
    ids = tok.encode(raw)
    assert ids
    assert not set(ids) & (tok.special.all() - {tok.special.unk})  # [UNK] only for unseen chars


def _grouped_equals_batch(tok: Tokenizer, groups: list[list[str]]) -> None:
    ids, lengths = tok.encode_grouped(groups)
    separately = tok.encode_batch([text for group in groups for text in group])
    assert lengths.tolist() == [len(row) for row in separately]
    assert ids.tolist() == [i for row in separately for i in row]


@pytest.mark.parametrize("kind,lang", CASES)
def test_grouped_encoding_equals_text_by_text(trained, kind, lang):
    tok = trained(kind, lang)
    texts = CORPORA[lang][0]
    # empty texts first, last and side by side; an empty group; texts with edge whitespace
    groups = [texts[:3], ["", texts[3], "", ""], [], ["  padded  ", "\tx", " "], texts[4:9]]
    _grouped_equals_batch(tok, groups)
    assert tok._marked is not None  # the marker path ran, not the fallback


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.text(max_size=12), max_size=4), min_size=1, max_size=4))
def test_grouped_encoding_equals_text_by_text_on_any_text(groups):
    _grouped_equals_batch(_BPE, groups)


def test_grouped_encoding_of_text_holding_the_marker_falls_back(trained):
    tok = trained("wordpiece", "en")
    _grouped_equals_batch(tok, [["one \ufdd0 two", "three"], ["four"]])


def _imported(tmp_path: Path, setup) -> Tokenizer:
    """A Hugging Face tokenizer directory (unigram on Lee, `setup` applied), imported."""
    hf = tokenizers.Tokenizer(tokenizers.models.Unigram())
    hf.pre_tokenizer = tokenizers.pre_tokenizers.Metaspace()
    setup(hf)
    hf.train_from_iterator(LEE[:300], tokenizers.trainers.UnigramTrainer(
        vocab_size=800, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>", show_progress=False))
    hf.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"pad_token": "<pad>", "eos_token": "</s>",
                                                                 "unk_token": "<unk>"}))
    return Tokenizer.from_hf(tmp_path)


def test_grouped_encoding_falls_back_where_a_text_start_is_special(tmp_path):
    # Metaspace "first" (Llama / T5 layout) marks only the first word of the whole text
    def first(hf):
        hf.pre_tokenizer = tokenizers.pre_tokenizers.Metaspace(prepend_scheme="first")
    tok = _imported(tmp_path, first)
    _grouped_equals_batch(tok, [["Hello world.", "The cat sat."], ["Another one."]])
    assert tok._marked is None


def test_imported_truncation_and_padding_are_ignored(tmp_path):
    def truncate_and_pad(hf):
        hf.enable_truncation(max_length=4)
        hf.enable_padding(pad_id=0, pad_token="<pad>", length=16)
    tok = _imported(tmp_path, truncate_and_pad)
    text = "The fire spread quickly across the hills near the town."
    ids = tok.encode(text)
    assert len(ids) > 4 and tok.special.pad not in ids
    assert tok.encode_batch([text, "x"])[0] == ids
    _grouped_equals_batch(tok, [[text, "x", text]])


# -- decode round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize("lang", CORPORA)
def test_bpe_round_trip_is_exact(trained, lang):
    tok = trained("bpe", lang)
    texts = CORPORA[lang][0]
    assert [tok.decode(ids) for ids in tok.encode_batch(texts)] == texts
    for text in ["", " leading space", "  two", "trailing  ", "a\nb\t c", "中文 mixed ünïcödé 🙂", "[MASK] </s>"]:
        assert tok.decode(tok.encode(text)) == text


def test_bpe_adds_the_leading_space_only_before_text_written_with_spaces(trained):
    """A Chinese sentence starts like Chinese inside a sentence (no space token in front), an
    English one like a word after a space."""
    tok = trained("bpe", "zh")
    for text in ZH[:5]:
        assert tok.encode(text) == tok.encode("。" + text)[len(tok.encode("。")):]
        assert not tok.decode(tok.encode(text)[:1]).startswith(" ")
    en = trained("bpe", "en")
    assert en.encode("court") == en.encode("the court")[len(en.encode("the")):]
    assert en.hf.id_to_token(en.encode("court")[0]).startswith("Ġ")


_BPE = train_tokenizer(LEE[:60], kind="bpe", vocab_size=minimum_vocab_size("bpe") + 100, show_progress=False)


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=60))
def test_bpe_round_trips_any_string(text):
    assert _BPE.decode(_BPE.encode(text)) == text



@pytest.mark.parametrize("kind,lang", CASES)
def test_decode_round_trips_up_to_normalisation(trained, kind, lang):
    tok = trained(kind, lang)
    texts = CORPORA[lang][0]
    decoded = [tok.decode(ids) for ids in tok.encode_batch(texts)]
    if kind == "char" and lang == "en":  # rare characters became [UNK] (min_frequency=2): decoding drops them
        kept = [_squash("".join(c for c in t if tok.hf.token_to_id(c) is not None)) for t in texts]
        assert [_squash(d) for d in decoded] == kept and sum(map(len, kept)) > 0.99 * sum(len(_squash(t)) for t in texts)
        return
    assert [_squash(d) for d in decoded] == [_squash(t) for t in texts]
    if kind == "wordpiece" and lang == "en":
        # Lowercased; spacing before punctuation may differ. Words themselves survive intact.
        assert decoded[0].split()[:5] == LEE[0].lower().split()[:5]
    if kind == "unigram":
        assert decoded == [unicodedata.normalize("NFKC", t) for t in texts]
    if kind == "char" and lang == "zh":
        assert decoded == texts  # no whitespace in the corpus: characters join back exactly


def test_decode_skip_special(trained):
    tok = trained("bpe", "en")
    ids = tok.encode("the fire")
    with_specials = [tok.special.cls, *ids, tok.special.mask, tok.special.sentinels[3], tok.special.eos]
    assert tok.decode(with_specials) == "the fire"
    assert tok.decode(with_specials, skip_special=False) == "[CLS] the fire[MASK]<extra_id_3></s>"


# -- word starts ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["bpe", "wordpiece", "unigram"])
def test_word_starts_split_word_true_only_at_first_piece(trained, kind):
    tok = trained(kind, "en")
    rare = "zqxjkvwq"  # certainly not one token in a vocabulary learnt from lee_background
    pieces = tok.encode(rare)
    assert len(pieces) > 1
    assert len(tok.encode("the")) == len(tok.encode("fire")) == 1
    ids = tok.encode(f"the {rare} fire")
    assert ids == tok.encode("the") + pieces + tok.encode("fire")
    assert tok.word_starts([f"the {rare} fire"]) == [[True, True] + [False] * (len(pieces) - 1) + [True]]


def test_word_starts_hand_checked_wordpiece(trained):
    tok = trained("wordpiece", "en")
    text = "Fire, fire."
    tokens = tok.hf.encode(text, add_special_tokens=False).tokens
    assert tokens == ["fire", ",", "fire", "."]
    assert tok.word_starts([text]) == [[True, True, True, True]]


def test_word_starts_chinese_characters_are_words(trained):
    text = "北京是首都"
    for kind in ("char", "wordpiece"):
        tok = trained(kind, "zh")
        assert tok.hf.encode(text, add_special_tokens=False).tokens == list(text)
        assert tok.word_starts([text]) == [[True] * 5]


def test_word_starts_char_kind_groups_latin_letters_into_words(trained):
    tok = trained("char", "en")
    text = "ab 中文cd, e"
    # tokens: a b 中 文 c d , e  (whitespace dropped)
    assert len(tok.encode(text)) == 8
    assert tok.word_starts([text]) == [[True, False, True, True, True, False, True, True]]


@pytest.mark.parametrize("kind,lang", CASES)
def test_word_starts_align_with_encode(trained, kind, lang):
    tok = trained(kind, lang)
    texts = CORPORA[lang][0][:20] + ["", "x"]
    starts = tok.word_starts(texts)
    for row, ids in zip(starts, tok.encode_batch(texts)):
        assert len(row) == len(ids)
        assert not row or row[0]


# -- save / load ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind,lang", CASES)
def test_save_load_round_trip(trained, kind, lang, tmp_path):
    tok = trained(kind, lang)
    tok.save(tmp_path / "tok")
    files = sorted(p.name for p in (tmp_path / "tok").iterdir())
    assert files == ["ptmkit_tokenizer.json", "tokenizer.json"]  # no temp files left behind
    meta = json.loads((tmp_path / "tok" / "ptmkit_tokenizer.json").read_text())
    assert meta["kind"] == kind and meta["lowercase"] == (kind == "wordpiece") and meta["version"] == 1
    assert hashlib.sha256((tmp_path / "tok" / "tokenizer.json").read_bytes()).hexdigest() == tok.sha256()

    loaded = Tokenizer.load(tmp_path / "tok")
    assert (loaded.kind, loaded.lowercase, loaded.vocab_size) == (tok.kind, tok.lowercase, tok.vocab_size)
    assert loaded.special == tok.special == OWN_SPECIAL_IDS
    assert loaded.sha256() == tok.sha256()
    texts = CORPORA[lang][0] + [" ".join(ALL_SPECIAL_TOKENS)]
    assert loaded.encode_batch(texts) == tok.encode_batch(texts)
    assert loaded.word_starts(texts[:10]) == tok.word_starts(texts[:10])
    assert Tokenizer.load(str(tmp_path / "tok" / "tokenizer.json")).sha256() == tok.sha256()


def test_save_overwrites_in_place(trained, tmp_path):
    trained("char", "zh").save(tmp_path)
    trained("bpe", "en").save(tmp_path)
    assert Tokenizer.load(tmp_path).sha256() == trained("bpe", "en").sha256()
    assert Tokenizer.load(tmp_path).kind == "bpe"


def test_load_without_meta_infers_kind(trained, tmp_path):
    trained("wordpiece", "en").save(tmp_path)
    (tmp_path / "ptmkit_tokenizer.json").unlink()
    loaded = Tokenizer.load(tmp_path)
    assert (loaded.kind, loaded.lowercase) == ("wordpiece", True)


# -- training options -----------------------------------------------------------------------------


def test_bpe_training_is_deterministic_and_streams_from_a_generator(trained):
    again = train_tokenizer((line for line in LEE), kind="bpe", vocab_size=2000, show_progress=False)
    assert again.sha256() == trained("bpe", "en").sha256()


@pytest.mark.parametrize("texts, vocab_size", [(LEE, 2000), (ZH, 107 + 150)])
def test_wordpiece_training_is_deterministic(texts, vocab_size):
    """The Rust trainer numbers its alphabet and tied merges in hash order, and would pick among
    equally frequent characters in hash order when the alphabet is cut (ZH's 325 characters in
    150 ids); ptmkit chooses the alphabet itself and renumbers."""
    trainings = {train_tokenizer(texts, kind="wordpiece", vocab_size=vocab_size, min_frequency=1,
                                 show_progress=False).hf.to_str()
                 for _ in range(3)}
    assert len(trainings) == 1


def _unk_share(tok: Tokenizer, texts: list[str]) -> float:
    ids = [i for text in texts for i in tok.encode(text)]
    return sum(i == tok.special.unk for i in ids) / len(ids)


def test_wordpiece_keeps_every_chinese_character_the_vocabulary_has_room_for():
    """Han characters and punctuation never continue a word, so each costs one id: a vocabulary
    with room for all of ZH's characters keeps them all (a flat half-the-budget alphabet left
    about half of them out, and each one missing makes its word [UNK])."""
    characters = {c for line in ZH for c in line}
    vocab_size = 107 + len(characters) + 10
    tok = train_tokenizer(ZH, kind="wordpiece", vocab_size=vocab_size, min_frequency=1, show_progress=False)
    assert tok.vocab_size <= vocab_size
    assert _unk_share(tok, ZH) == 0


def test_wordpiece_alphabet_leaves_room_for_characters_after_its_sample(monkeypatch):
    """The alphabet is chosen on the corpus's first texts (Chinese here); ids it leaves over go
    to characters seen later (English letters, each with its "##" twin), and the vocabulary
    still stays within its size, the same whether the texts come as a list or a stream."""
    monkeypatch.setattr(tokenizer_module, "ALPHABET_SAMPLE_CHARS", sum(map(len, ZH)))
    texts = ZH + LEE[:100]
    vocab_size = 107 + len({c for line in ZH for c in line}) + 200
    streamed = train_tokenizer(iter(texts), kind="wordpiece", vocab_size=vocab_size, min_frequency=1,
                               show_progress=False)
    assert streamed.vocab_size <= vocab_size
    vocab = streamed.hf.get_vocab()
    assert {"的", "e", "##e", "t", "##t"} <= vocab.keys()
    assert _unk_share(streamed, ZH) == 0 and _unk_share(streamed, LEE[:100]) < 0.01
    listed = train_tokenizer(texts, kind="wordpiece", vocab_size=vocab_size, min_frequency=1, show_progress=False)
    assert listed.sha256() == streamed.sha256()  # the sample went back in front of the stream


def test_lowercase_defaults_and_override():
    texts = LEE[:40]
    wp = train_tokenizer(texts, kind="wordpiece", vocab_size=400, show_progress=False)
    bpe = train_tokenizer(texts, kind="bpe", vocab_size=500, show_progress=False)
    bpe_lc = train_tokenizer(texts, kind="bpe", vocab_size=500, lowercase=True, show_progress=False)
    wp_cased = train_tokenizer(texts, kind="wordpiece", vocab_size=400, lowercase=False, show_progress=False)
    assert (wp.lowercase, bpe.lowercase, bpe_lc.lowercase, wp_cased.lowercase) == (True, False, True, False)
    assert wp.encode("The Fire") == wp.encode("the fire")
    assert bpe.encode("The Fire") != bpe.encode("the fire")
    assert bpe_lc.encode("The Fire") == bpe_lc.encode("the fire")
    assert wp_cased.encode("The Fire") != wp_cased.encode("the fire")


def test_char_keeps_the_most_frequent_characters():
    texts = ["aaaa bbb cc d"] * 3
    tok = train_tokenizer(texts, kind="char", vocab_size=minimum_vocab_size("char"), min_frequency=1, show_progress=False)
    assert tok.vocab_size == 107 + 4
    assert [tok.hf.id_to_token(i) for i in range(107, 111)] == ["a", "b", "c", "d"]
    assert tok.encode("ab x") == [107, 108, tok.special.unk]
    assert tok.decode(tok.encode("ab x")) == "ab"


# -- errors ---------------------------------------------------------------------------------------


def test_unknown_kind():
    with pytest.raises(UserError) as err:
        train_tokenizer(LEE, kind="sentencepiece")
    assert "sentencepiece" in err.value.what and err.value.where == "--kind"
    assert all(kind in err.value.fix for kind in KINDS)


@pytest.mark.parametrize("kind", KINDS)
def test_vocab_too_small(kind):
    minimum = minimum_vocab_size(kind)
    assert minimum > 107
    with pytest.raises(UserError) as err:
        train_tokenizer(LEE, kind=kind, vocab_size=minimum - 1)
    assert err.value.where == "--vocab-size"
    assert f"--vocab-size {minimum}" in err.value.fix
    assert minimum_vocab_size("bpe") >= 107 + 256


@pytest.mark.parametrize("texts", [[], iter([]), ["", "  \n"]])
def test_no_texts(texts):
    with pytest.raises(UserError) as err:
        train_tokenizer(texts, kind="bpe", vocab_size=500, show_progress=False)
    assert "no training text" in err.value.what


def test_bad_min_frequency():
    with pytest.raises(UserError) as err:
        train_tokenizer(LEE, min_frequency=0)
    assert err.value.where == "--min-frequency"


@pytest.mark.parametrize("vocab_size", [300, 400])
def test_unigram_vocab_too_small_for_the_alphabet(vocab_size):
    # The Chinese corpus has 325 distinct characters and unigram keeps every one of them.
    with pytest.raises(UserError) as err:
        train_tokenizer(ZH, kind="unigram", vocab_size=vocab_size, show_progress=False)
    assert err.value.where == "--vocab-size" and "character" in err.value.what


def test_load_missing_directory(tmp_path):
    with pytest.raises(UserError) as err:
        Tokenizer.load(tmp_path / "nope")
    assert "tokenizer.json" in err.value.what and "nope" in err.value.where
    assert "ptmkit tokenizer" in err.value.fix


def test_load_unreadable(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(UserError) as err:
        Tokenizer.load(tmp_path)
    assert "cannot read" in err.value.what and "retrain with `ptmkit tokenizer`" in err.value.fix


def test_load_wrong_special_order(tmp_path):
    swapped = ["[UNK]", "[PAD]", *EXPECTED_SPECIALS[2:]]
    hf = tokenizers.Tokenizer(tokenizers.models.WordLevel(unk_token="[UNK]"))
    hf.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    hf.train_from_iterator(LEE[:20], tokenizers.trainers.WordLevelTrainer(special_tokens=swapped, show_progress=False))
    hf.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(UserError) as err:
        Tokenizer.load(tmp_path)
    assert "[PAD]" in err.value.what and "id 1" in err.value.what and "expected at id 0" in err.value.what
    assert "retrain with `ptmkit tokenizer`" in err.value.fix


def test_load_missing_sentinels(tmp_path):
    hf = tokenizers.Tokenizer(tokenizers.models.WordLevel(unk_token="[UNK]"))
    hf.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    trainer = tokenizers.trainers.WordLevelTrainer(special_tokens=list(SPECIAL_TOKENS), show_progress=False)
    hf.train_from_iterator(LEE[:20], trainer)
    hf.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(UserError) as err:
        Tokenizer.load(tmp_path)
    assert "<extra_id_0>" in err.value.what


def test_load_meta_kind_mismatch(trained, tmp_path):
    trained("bpe", "en").save(tmp_path)
    meta = json.loads((tmp_path / "ptmkit_tokenizer.json").read_text())
    (tmp_path / "ptmkit_tokenizer.json").write_text(json.dumps({**meta, "kind": "unigram"}))
    with pytest.raises(UserError) as err:
        Tokenizer.load(tmp_path)
    assert "unigram" in err.value.what and "BPE" in err.value.what


# -- per-id word-start table (whole-word masking) ---------------------------------------------------


@pytest.mark.parametrize("kind,lang", CASES)
def test_word_start_table_shape_and_specials(trained, kind, lang):
    table = trained(kind, lang).word_start_table()
    assert table.shape == (trained(kind, lang).vocab_size,) and table.dtype == bool
    assert table[: len(ALL_SPECIAL_TOKENS)].all()
    if kind == "char":
        assert table.all(), "every character token is a word of its own"
    elif lang == "en":
        assert not table.all(), "sub-word vocabularies have continuation pieces"


@pytest.mark.parametrize("kind", ["bpe", "wordpiece", "unigram"])
def test_word_start_table_marks_only_the_first_piece_of_a_split_word(trained, kind):
    tok = trained(kind, "en")
    ids = tok.encode("the zqxjkvwq fire")
    assert tok.word_start_table()[ids].tolist() == tok.word_starts(["the zqxjkvwq fire"])[0]


def _table_vs_pretokenizer(tok: Tokenizer, texts: list[str]) -> tuple[list[int], list[bool], list[bool]]:
    ids = [i for row in tok.encode_batch(texts) for i in row]
    starts = [s for row in tok.word_starts(texts) for s in row]
    return ids, tok.word_start_table()[ids].tolist(), starts


def test_word_start_table_is_exact_for_wordpiece_and_unigram(trained):
    _, table, starts = _table_vs_pretokenizer(trained("wordpiece", "en"), LEE)
    assert table == starts
    _, table, starts = _table_vs_pretokenizer(trained("unigram", "en"), LEE)
    assert sum(a != b for a, b in zip(table, starts)) / len(starts) < 1e-3  # only after "[", "<"


def test_word_start_table_bpe_differs_only_where_letters_meet_other_characters(trained):
    """The table's bpe words are whitespace words: a GPT-2 regex chunk boundary between
    punctuation or digits and letters (`"I`, `10am`, `-year-old`) is not a word boundary, and a
    punctuation run split in pieces (`...`) gives each piece a start. Never inside letters."""
    tok = trained("bpe", "en")
    ids, table, starts = _table_vs_pretokenizer(tok, LEE)
    differ = [k for k in range(len(ids)) if table[k] != starts[k]]
    assert len(differ) / len(ids) < 0.02
    for k in differ:
        before, here = tok.decode([ids[k - 1]]), tok.decode([ids[k]])
        assert not (before[-1:].isalpha() and here[:1].isalpha()), (before, here)



@pytest.mark.parametrize("kind", ["bpe", "wordpiece"])
def test_a_special_tokens_strip_flags_leave_the_hash_and_the_ids(trained, kind, tmp_path):
    """RoBERTa's mask takes the spaces beside it (as an exported bpe's does); ptmkit reads special
    strings in text as text, so the flag changes no id, and the hash that keys prepared data
    ignores it. Any other change still counts."""
    tok = trained(kind, "en")
    tok.save(tmp_path / "tok")
    path = tmp_path / "tok" / "tokenizer.json"
    content = json.loads(path.read_text())
    (mask,) = [entry for entry in content["added_tokens"] if entry["id"] == tok.special.mask]
    mask["lstrip"] = mask["rstrip"] = True
    path.write_text(json.dumps(content))
    stripping = Tokenizer.load(tmp_path / "tok")
    assert stripping.hf.to_str() != tok.hf.to_str()
    text = f"The fire {mask['content']} spread. <mask> [SEP]"
    assert stripping.sha256() == tok.sha256() and stripping.encode(text) == tok.encode(text)
    mask["single_word"] = True
    path.write_text(json.dumps(content))
    assert Tokenizer.load(tmp_path / "tok").sha256() != tok.sha256()
