"""Static word vectors as a network: one embedding row per tokenizer id (word2vec's output).

Holding the matrix in a module (weight name `embedding`) lets a word2vec run be saved, loaded
(`--init RUN`) and used for downstream features through the same code as every other model.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class WordVectors(nn.Module):
    def __init__(self, vocab_size: int, dim: int) -> None:
        super().__init__()
        self.embedding = nn.Parameter(torch.zeros(vocab_size, dim))

    def forward(self, input_ids: Tensor) -> Tensor:
        """(B, L) ids -> (B, L, dim) vectors."""
        return self.embedding[input_ids]
