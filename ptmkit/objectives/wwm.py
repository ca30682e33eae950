"""Whole-word masking (WWM): BERT's masked LM, with whole words chosen instead of single pieces.

Words are visited in random order and taken whole until ~15% of the eligible tokens are
covered (google-research/bert `create_masked_lm_predictions`, `do_whole_word_mask=True`; see
`noise.choose_whole_words`). The 80/10/10 [MASK]/random/keep decision is then made per TOKEN,
as in that code and in HF `DataCollatorForWholeWordMask`, so one word may be part [MASK], part
random. Framing, dynamic masking and the loss are MLM's.

Where words come from, first match wins:

1. `window.word_starts`: per-token boundaries stored by `prepare(..., segment="jieba")`. Chinese
   WWM (Cui et al., arXiv 1906.08101): one token per Han character, words from a segmenter.
2. `vocab.word_start`: the per-id table of `Tokenizer.word_start_table` (wordpiece `##`, unigram
   `▁`, byte-level bpe `Ġ`/punctuation).
3. Neither: every token is a word of its own, i.e. plain token-level MLM (HF's collator silently
   does the same for tokenizers without `##`).
"""

from __future__ import annotations

import numpy as np

from ptmkit.data.segment import mostly_unspaced
from ptmkit.data.shards import TokenShards
from ptmkit.data.tokenizer import Tokenizer
from ptmkit.objectives.base import Window
from ptmkit.objectives.mlm import MaskedLM
from ptmkit.objectives.noise import bert_frame_word_starts, choose_whole_words, word_groups


SAMPLE_TOKENS = 4096
"""Tokens from the start of the data that `data_warning` reads to tell the script."""


class WholeWordMaskedLM(MaskedLM):
    name = "wwm"
    family = "AE"

    def data_warning(self, shards: TokenShards, tokenizer: Tokenizer) -> str | None:
        """Chinese or Japanese text prepared without a segmenter has no word boundaries the
        vocabulary can show (wordpiece and char: every character starts one; bpe and unigram: only
        spaces and punctuation do), so whole-word masking would not mask words: say how to get them."""
        if shards.word_starts is not None:
            return None
        sample = tokenizer.decode(np.asarray(shards.tokens[:SAMPLE_TOKENS]))
        if not mostly_unspaced(sample):
            return None
        return (f"wwm: {shards.directory} holds Chinese or Japanese text prepared without word boundaries, so "
                "its masked units are not words (single characters with a char or wordpiece tokenizer, "
                "whole runs between spaces and punctuation with bpe or unigram); prepare it with `ptmkit "
                "prepare --segment jieba` and pretrain with --data (or set `segment: jieba` in a compare config)")

    def word_starts(self, window: Window) -> np.ndarray:
        """Bool per framed position: True where a word starts (see the module docstring)."""
        return bert_frame_word_starts(window, self.vocab, self.seq_len)

    def select(self, window: Window, eligible: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        words = word_groups(self.word_starts(window), eligible)
        return choose_whole_words(words, self.options.mask_prob, rng)
