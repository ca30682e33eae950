"""What the encoder-decoder objectives (MASS, BART, T5) share: framing, batching and the loss.

Each of them turns a window into a ragged triple (encoder `input_ids`, `decoder_input_ids`,
`labels`) plus, for MASS, `decoder_position_ids`. The loss is the same for all three: encode the
corrupted source, decode the teacher-forced target with causal self-attention and cross-attention
to the source (objectives.md §1, family "encoder-decoder"), cross-entropy on the labelled rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from ptmkit.model.backbone import key_padding_mask
from ptmkit.objectives.base import IGNORE, Batch, Example, Objective, token_cross_entropy


def framed(tokens: np.ndarray, bos: int, eos: int, max_len: int) -> np.ndarray:
    """`<s> tokens </s>` cut to at most `max_len` ids (fairseq's BART / MASS sentence frame)."""
    return np.concatenate([[bos], tokens[: max_len - 2], [eos]]).astype(np.int64)


def shifted_right(targets: np.ndarray, start_id: int) -> np.ndarray:
    """Teacher-forcing decoder input: `start_id` then every target but the last."""
    return np.concatenate([[start_id], targets[:-1]]).astype(np.int64)


def padded(rows: list[np.ndarray], value: int) -> Tensor:
    """Right-pad 1-d int rows to the longest one and stack them: (B, max_len) int64."""
    out = np.full((len(rows), max(len(row) for row in rows)), value, dtype=np.int64)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return torch.from_numpy(out)


@dataclass(frozen=True)
class TextFrame:
    """How an encoder-decoder objective frames a (source, target) text pair, so that fine-tuning
    and generation ask the decoder exactly what pre-training taught it: the encoder reads
    `source_prefix source </s>`, the labels are `target_prefix target </s>`, the decoder reads
    them shifted right after `decoder_start`, and generation starts from `decoder_prompt` (the
    start token plus the forced target prefix, HF's `decoder_start_token_id` and
    `forced_bos_token_id`)."""

    source_prefix: tuple[int, ...]
    decoder_start: int
    target_prefix: tuple[int, ...]
    eos: int

    def source(self, tokens: Sequence[int]) -> np.ndarray:
        return np.array([*self.source_prefix, *tokens, self.eos], dtype=np.int64)

    def labels(self, tokens: Sequence[int]) -> np.ndarray:
        return np.array([*self.target_prefix, *tokens, self.eos], dtype=np.int64)

    def decoder_input(self, labels: np.ndarray) -> np.ndarray:
        return shifted_right(labels, self.decoder_start)

    @property
    def decoder_prompt(self) -> list[int]:
        return [self.decoder_start, *self.target_prefix]


def _mask_unless_all(valid: Tensor) -> Tensor | None:
    """(B, 1, L) key mask, or None when every key is valid (SDPA then takes its fast path)."""
    return None if bool(valid.all()) else key_padding_mask(valid)


class Seq2SeqObjective(Objective):
    """Base of MASS, BART and T5: ragged collate and the encoder-decoder loss."""

    architecture = "encoder_decoder"
    loss_over_labels = True
    layout = "bart"

    def collate(self, examples: list[Example]) -> Batch:
        """Pad ids with the pad id and labels with IGNORE. Decoder rows are padded at the end, so
        the causal mask alone keeps real rows off padded keys (no decoder mask is built)."""
        pad = self.vocab.special.pad
        batch = {"input_ids": padded([ex["input_ids"] for ex in examples], pad),
                 "decoder_input_ids": padded([ex["decoder_input_ids"] for ex in examples], pad),
                 "labels": padded([ex["labels"] for ex in examples], IGNORE)}
        if "decoder_position_ids" in examples[0]:
            batch["decoder_position_ids"] = padded([ex["decoder_position_ids"] for ex in examples], 0)
        return batch

    def text_frame(self) -> TextFrame:
        """MASS's frame (BART and T5 override it): `<s> source </s>`; the decoder starts from
        `<s>` at position 0, as a fragment opening the text does in pre-training."""
        special = self.vocab.special
        return TextFrame((special.bos,), special.bos, (), special.eos)

    def memory_keys(self, input_ids: Tensor) -> Tensor:
        """(B, Ls) bool: encoder positions the decoder may cross-attend to (all real tokens)."""
        return input_ids != self.vocab.special.pad

    def loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        input_ids = batch["input_ids"]
        memory = model.encode(input_ids, attn_mask=_mask_unless_all(input_ids != self.vocab.special.pad))
        hidden = model.decode(batch["decoder_input_ids"], memory,
                              memory_mask=_mask_unless_all(self.memory_keys(input_ids)),
                              position_ids=batch.get("decoder_position_ids"))
        return token_cross_entropy(model, hidden, batch["labels"])
