"""Corpus readers: every layout, compression, error message, and the real corpora where present."""

from __future__ import annotations

import bz2
import gzip
import itertools
import json
import lzma
import re
import time
from pathlib import Path

import blingfire
import gensim
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ptmkit.data import corpus
from ptmkit.data.corpus import Document, list_corpus_files, read_documents, read_texts, text_bytes
from ptmkit.data.sentences import blingfire_sentences, split_sentences
from ptmkit.errors import UserError

GENSIM_DATA = Path(gensim.__file__).parent / "test" / "test_data"
SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"

COMPRESSORS = {".gz": gzip.compress, ".bz2": bz2.compress, ".xz": lzma.compress}


def write(path: Path, text: str) -> Path:
    """Write UTF-8 text, compressed according to the file name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(COMPRESSORS.get(path.suffix, bytes)(text.encode("utf-8")))
    return path


def sentences_of(paths, **kwargs) -> list[tuple[str, ...]]:
    return [document.sentences for document in read_documents(paths, **kwargs)]


def shared(relative: str) -> Path:
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip("needs ../shared/data (not present)")
    return path


# --- sentence splitting -----------------------------------------------------------------------


def test_split_sentences_english_keeps_abbreviations() -> None:
    text = "  Dr. Smith arrived at 3 p.m. on Monday. It was cold!  Was it?  "
    expected = ["Dr. Smith arrived at 3 p.m. on Monday.", "It was cold!", "Was it?"]
    assert split_sentences(text) == expected


def test_split_sentences_chinese_without_spaces() -> None:
    assert split_sentences("今天天气很好。我们去公园吧！你觉得怎么样？好的") == [
        "今天天气很好。",
        "我们去公园吧！",
        "你觉得怎么样？",
        "好的",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("他说：“我们走吧。”然后离开了。", ["他说：“我们走吧。”", "然后离开了。"]),
        ("他说：「我们走吧。」然后离开了。", ["他说：「我们走吧。」", "然后离开了。"]),
        ("这是一个问题？！真的吗？", ["这是一个问题？！", "真的吗？"]),
        ("第一；第二。", ["第一；", "第二。"]),
        ("等一下……我想想。", ["等一下……", "我想想。"]),
        ("房间很大.建议用别的路线!好", ["房间很大.", "建议用别的路线!", "好"]),
        ("版本2.0很好。", ["版本2.0很好。"]),
        ("English first. 然后中文。", ["English first.", "然后中文。"]),
    ],
)
def test_split_sentences_fixes_what_blingfire_misses(text: str, expected: list[str]) -> None:
    assert split_sentences(text) == expected


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_split_sentences_blank_gives_nothing(text: str) -> None:
    assert split_sentences(text) == []


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="ab Z.!?,;。！？；…“”「」（）字词 ", max_size=60))
def test_split_sentences_loses_no_character(text: str) -> None:
    sentences = split_sentences(text)
    assert all(sentence and sentence == sentence.strip() for sentence in sentences)
    assert "".join(sentences).replace(" ", "") == text.replace(" ", "")


# --- plain text -------------------------------------------------------------------------------


def test_plain_text_without_blank_lines_is_one_document_per_line(tmp_path: Path) -> None:
    path = write(tmp_path / "lines.txt", "First doc. Two sentences.\nSecond doc\n\n\n")
    assert sentences_of(path) == [("First doc.", "Two sentences."), ("Second doc",)]


def test_plain_text_with_blank_lines_is_blank_line_separated(tmp_path: Path) -> None:
    text = "\n\nTitle line\nPara one. Still one.\n \t\n\n  Doc two.  \n"
    path = write(tmp_path / "blocks.txt", text)
    assert sentences_of(path) == [("Title line", "Para one.", "Still one."), ("Doc two.",)]
    unsplit = [("Title line", "Para one. Still one."), ("Doc two.",)]
    assert sentences_of(path, split=False) == unsplit


@pytest.mark.parametrize("text_lines, documents", [(100, 2), (101, 101), (999, 999)])
def test_blank_lines_make_documents_only_when_they_are_not_rare(tmp_path: Path, text_lines: int,
                                                                documents: int) -> None:
    """One gap per 100 text lines at least: a stray empty record among 999 one-per-line reviews
    used to merge them into two documents."""
    lines = [f"Review {number} was fine." for number in range(text_lines)]
    lines.insert(text_lines // 2, "")
    path = write(tmp_path / "reviews.txt", "\n".join(lines) + "\n")
    assert len(sentences_of(path, split=False)) == documents


def test_the_layout_is_judged_by_the_head_of_the_file(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(corpus, "_SNIFF_LINES", 5)  # 100,000: not a pass over a whole .xz first
    path = write(tmp_path / "t.txt", "One.\nTwo.\nThree.\nFour.\nFive.\n\nSix.\n")
    assert len(sentences_of(path)) == 6  # the whole file would have made blocks: 2 documents


@pytest.mark.parametrize("suffix", [".gz", ".bz2", ".xz"])
def test_compressed_files_read_like_plain_ones(tmp_path: Path, suffix: str) -> None:
    text = "\ufeffOne. Two.\nThree.\n"
    plain = sentences_of(write(tmp_path / "c.txt", text))
    assert plain == [("One.", "Two."), ("Three.",)]  # the BOM is gone
    assert sentences_of(write(tmp_path / f"c.txt{suffix}", text)) == plain
    records = "".join(json.dumps({"text": line}) + "\n" for line in ["One. Two.", "Three."])
    assert sentences_of(write(tmp_path / f"c.jsonl{suffix}", records)) == plain


def test_read_texts_joins_paragraphs_unsplit(tmp_path: Path) -> None:
    path = write(tmp_path / "t.txt", "Para one. Still one.\nPara two.\n\n今天很好。明天也好。\n")
    assert list(read_texts(path)) == ["Para one. Still one.\nPara two.", "今天很好。明天也好。"]


def test_documents_carry_their_source_and_files_are_read_in_order(tmp_path: Path) -> None:
    first, second = write(tmp_path / "b.txt", "B one.\n"), write(tmp_path / "a.txt", "A one.\n")
    empty = write(tmp_path / "empty.txt", "")
    assert list(read_documents([first, empty, str(second)])) == [
        Document(("B one.",), str(first)),
        Document(("A one.",), str(second)),
    ]


# --- directories ------------------------------------------------------------------------------


def test_directory_is_walked_sorted_skipping_hidden_and_binary(tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    write(root / "b.txt", "B.\n")
    write(root / "a" / "z.jsonl", '{"text": "AZ."}\n')
    write(root / "a" / "deeper" / "x.txt.gz", "AX.\n")
    write(root / ".hidden" / "h.txt", "hidden\n")
    write(root / ".dot.txt", "hidden\n")
    (root / "cache.pyc").write_bytes(b"\x00\x01")
    (root / "pack.tar.gz").write_bytes(gzip.compress(b"\x00"))
    expected = [root / "a" / "deeper" / "x.txt.gz", root / "a" / "z.jsonl", root / "b.txt"]
    assert list_corpus_files([root]) == expected
    assert sentences_of(root) == [("AX.",), ("AZ.",), ("B.",)]


def test_a_file_named_twice_is_read_once_where_it_first_comes(tmp_path: Path) -> None:
    root = tmp_path / "dd"
    lines, other = write(root / "lines.txt", "A.\n"), write(root / "other.txt", "B.\n")
    (tmp_path / "link.txt").symlink_to(lines)
    assert list_corpus_files([root, lines, tmp_path / "link.txt"]) == [lines, other]
    assert sentences_of([other, root]) == [("B.",), ("A.",)]


def test_linked_directories_are_read_once_and_a_broken_link_is_named(tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    write(root / "b.txt", "B.\n")
    write(tmp_path / "elsewhere" / "w.txt", "W.\n")
    (root / "wiki").symlink_to(tmp_path / "elsewhere")  # corpus/wiki -> /data/wiki
    (root / "again").symlink_to(root)  # a loop: read once
    assert list_corpus_files([root]) == [root / "b.txt", root / "wiki" / "w.txt"]
    (root / "gone.txt").symlink_to(tmp_path / "nothing.txt")
    with pytest.raises(UserError, match="broken link in the corpus directory.*gone.txt"):
        list_corpus_files([root])


# --- JSON lines -------------------------------------------------------------------------------


def test_json_lines_read_the_text_field(tmp_path: Path) -> None:
    lines = [
        json.dumps({"id": 1, "body": "First para. Second sentence.\n\nSecond para."}),
        "",
        json.dumps({"id": 2, "body": None}),
        json.dumps({"id": 3, "body": "  "}),
        json.dumps({"id": 4, "body": "Last."}),
    ]
    path = write(tmp_path / "d.json", "\n".join(lines) + "\n")
    assert sentences_of(path, text_field="body") == [
        ("First para.", "Second sentence.", "Second para."),
        ("Last.",),
    ]


def test_a_lone_surrogate_becomes_a_replacement_character(tmp_path: Path) -> None:
    """`\\ud83d` alone (an emoji cut in two) used to stop the sentence splitter and the tokenizer
    trainer with a UnicodeEncodeError."""
    records = ['{"text": "broken emoji \\ud83d here."}', '{"text": ["whole \\ud83d\\ude00 emoji.", "\\udc00"]}']
    path = write(tmp_path / "s.jsonl", "\n".join(records) + "\n")
    assert sentences_of(path) == [("broken emoji \ufffd here.",), ("whole \U0001f600 emoji.", "\ufffd")]


def test_extensionless_json_lines_are_sniffed(tmp_path: Path) -> None:
    """WikiExtractor --json writes AA/wiki_00 with one article object per line."""
    articles = [{"id": "12", "url": "https://en.wikipedia.org/wiki?curid=12", "title": "Anarchism",
                 "text": "Anarchism is a philosophy. It rejects hierarchy."},
                {"id": "25", "url": "https://en.wikipedia.org/wiki?curid=25", "title": "Autism",
                 "text": "It is a condition."}]
    path = write(tmp_path / "AA" / "wiki_00", "\n" + "".join(json.dumps(a) + "\n" for a in articles))
    assert sentences_of(path) == [("Anarchism is a philosophy.", "It rejects hierarchy."), ("It is a condition.",)]
    assert sentences_of(path, text_field="title") == [("Anarchism",), ("Autism",)]
    braces = write(tmp_path / "AA" / "wiki_01", "{{Infobox}} is markup.\n{}\n")
    assert sentences_of(braces) == [("{{Infobox}} is markup.",), ("{}",)]


# --- CSV / TSV --------------------------------------------------------------------------------


def test_csv_handles_quoted_commas_and_newlines(tmp_path: Path) -> None:
    text = (
        'label,review\n1,"Good, cheap, clean. Would stay again."\n'
        '0,"Line one.\nLine two, too."\n1,\n'
    )
    path = write(tmp_path / "r.csv", text)
    assert sentences_of(path, text_field="review") == [
        ("Good, cheap, clean.", "Would stay again."),
        ("Line one.", "Line two, too."),
    ]


def test_tsv_keeps_bare_quotes(tmp_path: Path) -> None:
    text = 'sentence\tlabel\nthe " bare quote stays \t1\n"quoted" start\t0\n'
    path = write(tmp_path / "train.tsv", text)
    expected = [('the " bare quote stays',), ('"quoted" start',)]
    assert sentences_of(path, text_field="sentence") == expected


# --- Wikipedia --------------------------------------------------------------------------------

WIKIEXTRACTOR = """<doc id="1" url="?curid=1" title="Harrow School">
Harrow School

Harrow School () is a school in London. It opened in 1572.
History.
It grew.
</doc>
<doc id="2" url="?curid=2" title="Stub">
Stub


</doc>
<doc id="3" url="?curid=3" title="数学">
数学

数学是一門学科。它很重要！
</doc>
"""


def test_wikiextractor_output_is_sniffed(tmp_path: Path) -> None:
    path = write(tmp_path / "AA" / "wiki_00", WIKIEXTRACTOR)
    assert sentences_of(path) == [
        ("Harrow School is a school in London.", "It opened in 1572.", "History.", "It grew."),
        ("数学是一門学科。", "它很重要！"),
    ]


MEDIAWIKI = """<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/" version="0.10">
  <siteinfo><sitename>Wikipedia</sitename></siteinfo>
  <page><title>Anarchism</title><ns>0</ns><id>12</id><revision><id>1</id>
    <text xml:space="preserve">{{Infobox|name=X}}
'''Anarchism''' ({{IPA|/x/}}) is a [[political philosophy]]. It rejects [[hierarchy|hierarchies]].
&lt;ref&gt;A ref.&lt;/ref&gt;

==History==
Early ideas appeared in ''ancient'' China.
* A list item that ends like a sentence.
{| class="wikitable"
| a cell
|}
[[File:Woodcut.png|thumb|A woodcut caption]]
[[Category:Political ideologies]]</text></revision></page>
  <page><title>AccessibleComputing</title><ns>0</ns><id>10</id><redirect title="Computer access" />
    <revision><id>2</id><text xml:space="preserve">#REDIRECT [[Computer access]]</text></revision>
  </page>
  <page><title>Category:Anarchism</title><ns>14</ns><id>13</id>
    <revision><id>3</id><text xml:space="preserve">Pages about anarchism.</text></revision></page>
  <page><title>Star Wars: A New Hope</title><ns>0</ns><id>14</id>
    <revision><id>4</id><text xml:space="preserve">It is a film.</text></revision></page>
</mediawiki>
"""


@pytest.mark.parametrize("name", ["w.xml.bz2", "enwiki-pages-articles1.xml-p1p41242.bz2", "w.xml"])
def test_mediawiki_dump_keeps_article_prose(tmp_path: Path, name: str) -> None:
    path = write(tmp_path / name, MEDIAWIKI)
    assert sentences_of(path) == [
        ("Anarchism is a political philosophy.", "It rejects hierarchies.",
         "Early ideas appeared in ancient China."),
        ("It is a film.",),
    ]


# --- errors -----------------------------------------------------------------------------------


def message(error: pytest.ExceptionInfo[UserError]) -> str:
    return str(error.value)


def test_missing_path_fails_before_iteration(tmp_path: Path) -> None:
    with pytest.raises(UserError) as error:
        read_documents([tmp_path / "nope.txt"])  # no next(): the check is eager
    assert "does not exist" in message(error) and "nope.txt" in message(error)


def test_directory_without_corpus_files(tmp_path: Path) -> None:
    write(tmp_path / "d" / ".hidden.txt", "x\n")
    with pytest.raises(UserError) as error:
        list_corpus_files([tmp_path / "d"])
    assert "holds no corpus files" in message(error) and str(tmp_path / "d") in message(error)


def test_no_paths_and_binary_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no corpus paths given"):
        list_corpus_files([])
    archive = tmp_path / "online_shopping.zip"
    archive.write_bytes(b"PK\x03\x04")
    with pytest.raises(UserError, match="not a text corpus file.*unpack it first"):
        list_corpus_files(archive)


def test_missing_json_field_names_line_and_keys(tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl", '{"text": "ok."}\n{"sentence": "x", "label": 1}\n')
    with pytest.raises(UserError) as error:
        list(read_documents(path))
    assert f"{path}:2" in message(error)
    assert "no field 'text'" in message(error)
    assert "'sentence', 'label'" in message(error) and "--text-field" in message(error)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('{"text": "broken"', "malformed JSON line"),
        ('["a", "b"]', "JSON line is not an object"),
        ('{"text": ["a", 2]}', "field 'text' holds list, not text"),
        ('{"text": {"a": "b"}}', "field 'text' holds dict, not text"),
        ("[" * 100_000 + "]" * 100_000, "JSON line nested too deeply"),
    ],
)
def test_bad_json_line_names_file_and_line(tmp_path: Path, line: str, expected: str) -> None:
    path = write(tmp_path / "d.jsonl", '{"text": "ok."}\n\n' + line + "\n")
    with pytest.raises(UserError) as error:
        list(read_documents(path))
    assert expected in message(error) and f"{path}:3" in message(error)


def test_a_json_file_of_one_array_reads_each_object_as_a_document(tmp_path: Path) -> None:
    path = write(tmp_path / "d.json.gz", '[{"text": "One. Two."},\n {"text": "Three."}, {"text": null}]')
    assert [list(d.sentences) for d in read_documents(path)] == [["One.", "Two."], ["Three."]]
    for text, expected in (('[{"text": "a"},\n {oops}]', f"{tmp_path / 'e.json'}:2"),
                           ('[{"text": "a"}, "b"]', "item 2")):
        bad = write(tmp_path / "e.json", text)
        with pytest.raises(UserError) as error:
            list(read_documents(bad))
        assert expected in message(error)


def test_a_json_list_of_strings_is_a_document_of_those_paragraphs(tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl", '{"source": ["First one. Second one.", "Third."], "target": "x"}\n')
    (document,) = read_documents(path, text_field="source")
    assert list(document.sentences) == ["First one.", "Second one.", "Third."]


def test_missing_csv_column_lists_columns(tmp_path: Path) -> None:
    path = write(tmp_path / "r.csv", "label,review\n1,good\n")
    with pytest.raises(UserError) as error:
        list(read_documents(path))
    assert "no column 'text'" in message(error)
    assert "'label', 'review'" in message(error) and "--text-field" in message(error)


def test_no_documents_at_all(tmp_path: Path) -> None:
    empty, blank = write(tmp_path / "e.txt", ""), write(tmp_path / "b.jsonl", '{"text": ""}\n\n')
    with pytest.raises(UserError) as error:
        list(read_documents([empty, blank]))
    assert "no documents found" in message(error) and str(empty) in message(error)


def test_truncated_and_malformed_files(tmp_path: Path) -> None:
    whole = gzip.compress(("A sentence. " * 5000).encode())
    truncated = tmp_path / "cut.txt.gz"
    truncated.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(UserError, match="cannot read corpus file"):
        list(read_documents(truncated))
    broken = write(tmp_path / "bad.xml", "<mediawiki><page><title>x</title>")
    with pytest.raises(UserError, match="malformed XML"):
        list(read_documents(broken))


@pytest.mark.parametrize("suffix", [".gz", ".xz", ".bz2"])
def test_corrupt_compressed_files_are_a_user_error(tmp_path: Path, suffix: str) -> None:
    compress = {".gz": gzip.compress, ".xz": lzma.compress, ".bz2": bz2.compress}[suffix]
    data = bytearray(compress(("A sentence about rivers. " * 4000).encode()))
    data[len(data) // 3: len(data) // 3 + 64] = bytes(range(64))  # damage inside the stream
    path = tmp_path / f"damaged.txt{suffix}"
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="cannot read corpus file"):
        list(read_documents(path))
    (tmp_path / "foreign.txt.xz").write_bytes(b"not xz at all " * 10)
    with pytest.raises(UserError, match="cannot read corpus file"):
        list(read_documents(tmp_path / "foreign.txt.xz"))


@pytest.mark.parametrize("suffix", [".csv", ".tsv"])
def test_a_table_holding_only_a_byte_order_mark_has_no_documents(tmp_path: Path, suffix: str) -> None:
    (tmp_path / f"empty{suffix}").write_bytes(b"\xef\xbb\xbf")
    one = write(tmp_path / "one.txt", "One line of text.\n")
    assert [list(d.sentences) for d in read_documents([tmp_path / f"empty{suffix}", one])] == [["One line of text."]]


# --- real corpora -----------------------------------------------------------------------------


def test_gensim_lee_background_is_one_document_per_line() -> None:
    documents = list(read_documents(GENSIM_DATA / "lee_background.cor"))
    # 300 lines; `wc -l` says 299 because the last line has no newline.
    assert len(documents) == 300
    assert sum(len(document.sentences) for document in documents) > len(documents)


def test_gensim_wikipedia_dump_yields_clean_articles() -> None:
    dump = GENSIM_DATA / "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
    documents = list(itertools.islice(read_documents(dump), 10))
    assert documents[0].sentences[0].startswith("Anarchism is a political philosophy")
    sentences = [sentence for document in documents for sentence in document.sentences]
    assert not [s for s in sentences if "'''" in s or s.startswith(("==", "*", "|", "{"))]


@pytest.mark.shared
def test_shared_enwiki_slice_streams() -> None:
    path = shared("pretrain/enwiki_sample/enwiki_2018_slice_AA.wikiextractor.txt.gz")
    start = time.perf_counter()
    documents = list(itertools.islice(read_documents(path), 500))
    assert time.perf_counter() - start < 5  # streams: the 66 MB file is not read up front
    assert len(documents) == 500
    assert documents[0].sentences[0].startswith("Jarred Shaw (born September 28, 1990)")
    assert not [d for d in documents for s in d.sentences if s.startswith(("<doc", "</doc"))]


@pytest.mark.shared
def test_shared_chinese_wiki_is_split_into_sentences() -> None:
    documents = list(read_documents(shared("zh/zhwiki_sample/wiki_00")))
    assert len(documents) == 64
    first = documents[0].sentences
    assert first[0].startswith("数学是利用符号语言") and first[0].endswith("。")
    unsplit = re.compile("[。！？；][\u4e00-\u9fff]")  # a terminator followed by more text
    assert not [s for d in documents for s in d.sentences if unsplit.search(s)]


@pytest.mark.shared
def test_shared_sst2_tsv() -> None:
    texts = list(read_texts(shared("glue/SST-2/train.tsv"), text_field="sentence"))
    assert len(texts) == 67_349
    assert texts[0] == "hide new secretions from the parental units"



@pytest.mark.parametrize("text", [
    "", " ", "One.", "Dr. Smith went to Washington. He arrived at 5 p.m. on Monday!",
    "今天天气很好。我们去公园吧！", "é" * 40_000 + ". Next one.", "a\nb. C d.", "\u00a0x. y\u2029z.",
])
def test_blingfire_without_reallocation_matches_its_wrapper(text: str) -> None:
    # the long text grows the reused buffer; the short ones after it reuse the larger buffer
    assert blingfire_sentences(text) == blingfire.text_to_sentences(text)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(), min_size=1, max_size=4))
def test_blingfire_without_reallocation_matches_its_wrapper_on_any_text(texts: list[str]) -> None:
    for text in texts:  # several calls in a row: what a shorter call leaves behind must not leak
        assert blingfire_sentences(text) == blingfire.text_to_sentences(text)


def test_text_size_without_reading(tmp_path: Path) -> None:
    text = "Some text. " * 100
    assert text_bytes(write(tmp_path / "a.txt.gz", text)) == len(text)  # gzip records it
    assert text_bytes(write(tmp_path / "a.txt", text)) == len(text)
    assert text_bytes(write(tmp_path / "a.txt.bz2", text)) > 0
    empty = tmp_path / "empty.txt.gz"
    empty.write_bytes(b"")
    assert text_bytes(empty) == 0  # no size to read: reading it reports the file
