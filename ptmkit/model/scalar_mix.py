"""ELMo's task-specific weighted sum of biLM layers (Peters et al. 2018, eq. 1; AllenNLP ScalarMix).

    ELMo_k = γ · Σ_j softmax(w)_j · h_{k,j}

`w` starts at 0 (the plain mean) and `γ` at 1, as in AllenNLP. With `layer_norm` each layer is
normalised before weighting, which the paper reports helps in some tasks. Unlike AllenNLP, which
normalises over every unmasked element of the batch at once, this normalises each token vector on
its own (a LayerNorm without affine parameters), so a token's features never depend on the other
sentences in its batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ScalarMix(nn.Module):
    def __init__(self, n_layers: int, layer_norm: bool = False) -> None:
        super().__init__()
        self.weights = nn.Parameter(torch.zeros(n_layers))
        self.gamma = nn.Parameter(torch.ones(()))
        self.layer_norm = layer_norm

    def normalized_weights(self) -> Tensor:
        """s = softmax(w): non-negative, sums to 1."""
        return torch.softmax(self.weights, dim=0)

    def forward(self, layers: list[Tensor]) -> Tensor:
        """Mix equally-shaped layers (..., H) into one (..., H)."""
        if len(layers) != len(self.weights):
            raise ValueError(f"ScalarMix built for {len(self.weights)} layers, got {len(layers)}")
        if self.layer_norm:
            layers = [F.layer_norm(h, h.shape[-1:]) for h in layers]
        stacked = torch.stack(layers, dim=0)
        weights = self.normalized_weights().view(-1, *([1] * (stacked.dim() - 1)))
        return self.gamma * (weights * stacked).sum(dim=0)
