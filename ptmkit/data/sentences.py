"""Sentence splitting for corpus documents.

blingfire's finite-state splitter is fast (tens of MB/s) and knows English abbreviations, but on
Chinese it cuts *before* a closing quote (``“走吧。`` | ``”然后``), splits ``？！`` into two
sentences, never splits on ``；``, and misses ``…`` and the ASCII ``.!?`` that informal text
(reviews) puts between Han characters. A regex pass repairs those cases; it only runs on text
that contains Han characters or Chinese punctuation, so English pays almost nothing.
"""

from __future__ import annotations

import re

import blingfire

_HAN = "\u3400-\u9fff\uf900-\ufaff"
_CJK_CLOSERS = "”’」』）》】〕〉"
_CJK_MARK = re.compile(f"[{_HAN}。！？；]")
# Closers and terminators that blingfire left at the start of the next sentence.
_STRAY_START = re.compile(f"^[{_CJK_CLOSERS}。！？；…!?]+")
# A whole run of terminators with its closing quotes/brackets, followed by more text: a sentence
# boundary. "…" and ASCII ".!?" count only right after a Han character (English "Well… I" and
# "3.5" are left alone), ASCII ones only when a Han character follows too.
_CJK_BOUNDARY = re.compile(
    f"(?:[。！？；]+|(?<=[{_HAN}])…+)[{_CJK_CLOSERS}]*(?=[^\\s。！？；…{_CJK_CLOSERS}])"
    f"|(?<=[{_HAN}])[.!?]+(?=[{_HAN}])"
)


def split_sentences(text: str) -> list[str]:
    """Split one paragraph into stripped, non-empty sentences (English and Chinese)."""
    pieces = blingfire.text_to_sentences(text).split("\n")
    if _CJK_MARK.search(text):
        pieces = [
            sentence
            for piece in _reattach_stray_punctuation(pieces)
            for sentence in _CJK_BOUNDARY.sub("\\g<0>\n", piece).split("\n")
        ]
    return [piece.strip() for piece in pieces if piece.strip()]


def _reattach_stray_punctuation(pieces: list[str]) -> list[str]:
    """Give a closing quote or extra ``！`` back to the sentence it ends; blingfire cut it off."""
    merged: list[str] = []
    for piece in pieces:
        stray = _STRAY_START.match(piece)
        if stray and merged:
            merged[-1] += stray.group()
            piece = piece[stray.end() :]
        if piece:
            merged.append(piece)
    return merged
