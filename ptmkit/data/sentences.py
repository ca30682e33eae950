"""Sentence splitting for corpus documents.

blingfire's finite-state splitter is fast (tens of MB/s) and knows English abbreviations, but on
Chinese it cuts *before* a closing quote (``“走吧。`` | ``”然后``), splits ``？！`` into two
sentences, never splits on ``；``, and misses ``…`` and the ASCII ``.!?`` that informal text
(reviews) puts between Han characters. A regex pass repairs those cases; it only runs on text
that contains Han characters or Chinese punctuation, so English pays almost nothing.
"""

from __future__ import annotations

import ctypes
import re
import threading

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


_BUFFERS = threading.local()


def blingfire_sentences(text: str) -> str:
    """``blingfire.text_to_sentences(text)``, the same C call, without the zeroed output buffer of
    twice the input that its wrapper allocates on every call: on paragraph-sized texts that
    allocation cost as much as the splitting (a reused buffer per thread halves the time)."""
    data = text.encode("utf-8")
    buffer = getattr(_BUFFERS, "buffer", None)
    if buffer is None or len(buffer) < 2 * len(data):
        buffer = _BUFFERS.buffer = ctypes.create_string_buffer(max(1 << 16, 4 * len(data)))
    written = blingfire.blingfire.TextToSentences(data, len(data), buffer, len(buffer))
    if written <= 0 or written > len(buffer):  # -1: blingfire failed; its wrapper then gives ""
        return ""
    # `written` counts the final NUL; like the wrapper, the result ends at the first NUL
    return ctypes.string_at(buffer, written - 1).partition(b"\0")[0].decode("utf-8")


def split_sentences(text: str) -> list[str]:
    """Split one paragraph into stripped, non-empty sentences (English and Chinese)."""
    pieces = blingfire_sentences(text).split("\n")
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
