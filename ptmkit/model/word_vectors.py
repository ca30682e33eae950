"""Static word vectors as a network: one embedding row per tokenizer id (word2vec's output).

Holding the matrix in a module (weight name `embedding`) lets a word2vec run be saved, loaded
(`--init RUN`) and used for downstream features through the same code as every other model.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ptmkit.errors import UserError


class WordVectors(nn.Module):
    def __init__(self, vocab_size: int, dim: int) -> None:
        super().__init__()
        self.embedding = nn.Parameter(torch.zeros(vocab_size, dim))

    def forward(self, input_ids: Tensor) -> Tensor:
        """(B, L) ids -> (B, L, dim) vectors."""
        return self.embedding[input_ids]


def token_embedding_weights(model: nn.Module) -> list[nn.Parameter]:
    """The token embedding matrix of every transformer in `model` (one per tower)."""
    from ptmkit.model.backbone import Transformer
    return [m.embed.tokens.weight for m in model.modules() if isinstance(m, Transformer)]


def init_token_embeddings(model: nn.Module, vectors: Tensor, where: str) -> None:
    """Start every transformer's token embedding in `model` from word vectors (word2vec-
    initialised pre-training). The vectors are rescaled to the embedding's initial standard
    deviation, so position embeddings and the tied output layer keep the scale they were
    initialised for; only the directions of the vectors carry over."""
    targets = token_embedding_weights(model)
    if not targets:
        raise UserError("this objective's model has no transformer token embedding", where,
                        "initialise a transformer objective (mlm, electra, clm, ...) from word vectors")
    for weight in targets:
        if weight.shape != vectors.shape:
            raise UserError(f"word vectors of shape {tuple(vectors.shape)} do not fit the token embedding "
                            f"{tuple(weight.shape)}", where,
                            f"pre-train word2vec with objective_options.vector_size: {weight.shape[1]} "
                            "and the same tokenizer")
        with torch.no_grad():
            centred = vectors.float() - vectors.float().mean()
            weight.copy_(centred * (weight.std() / centred.std().clamp(min=1e-12)))
