"""Word segmentation at prepare time, for whole-word masking of text written without spaces.

Chinese BERT tokenizes one character per token, so no vocabulary string marks where a word
ends. Chinese whole-word masking (Cui et al., arXiv 1906.08101) segments the text with a word
segmenter (LTP there; HF `run_chinese_ref.py` likewise) and masks every character of a chosen
word together. We segment with jieba and store, per token, whether it starts a word; any
tokenizer kind works, since tokens are matched to words through their character offsets.
"""

from __future__ import annotations

import logging
import re

import numpy as np

from ptmkit.data.tokenizer import Tokenizer


def jieba_word_offsets(text: str) -> np.ndarray:
    """Character offset where each jieba word of `text` starts (default mode, HMM on)."""
    import jieba  # imported on first use: only `prepare --segment jieba` needs it

    jieba.setLogLevel(logging.WARNING)  # no "Building prefix dict" chatter on stderr
    return np.fromiter((start for _, start, _ in jieba.tokenize(text)), dtype=np.int64)


def token_word_starts(text: str, offsets: list[tuple[int, int]], words: np.ndarray) -> np.ndarray:
    """uint8 per token: 1 where the token is the first one inside a new word.

    A token belongs to the word holding its first non-space character (a byte-level bpe token
    may carry the space before a word); tokens that split one character (byte-level bpe) share
    that character's word.
    """
    anchors = np.array([start + len(text[start:end]) - len(text[start:end].lstrip())
                        for start, end in offsets], dtype=np.int64)
    word = np.searchsorted(words, anchors, side="right")
    return np.concatenate([[1], word[1:] != word[:-1]]).astype(np.uint8)[: len(offsets)]


UNSPACED_RANGES = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f"
"""The scripts written without spaces between words, as a regex class body: Japanese kana and
Han ideographs (BERT's ranges)."""
UNSPACED = re.compile(f"[{UNSPACED_RANGES}]")


def mostly_unspaced(text: str) -> bool:
    """Whether most of `text`'s letters are in scripts whose word boundaries no space marks
    (so only a segmenter can find its words)."""
    letters = sum(ch.isalpha() for ch in text)
    return letters > 0 and len(UNSPACED.findall(text)) > letters / 2


SEGMENTERS = {"jieba": jieba_word_offsets}
"""Segmenter name -> function giving the start offset of each word of a text."""


def segment_word_starts(tokenizer: Tokenizer, texts: list[str], segment: str) -> list[np.ndarray]:
    """Per text, aligned with `tokenizer.encode_batch(texts)`: uint8 1 where a token starts a
    word of the `segment` segmenter."""
    encodings = tokenizer.hf.encode_batch(list(texts), add_special_tokens=False)
    return [token_word_starts(text, enc.offsets, SEGMENTERS[segment](text))
            for text, enc in zip(texts, encodings)]
