"""ELMo's bidirectional LSTM language model (word-input variant of allenai/bilm-tf).

Two independent stacks of projected LSTMs read the sentence left-to-right and right-to-left.
They share only the token embedding (Θx) and the softmax (Θs); their states are never mixed
before the loss, so neither direction can see the token it predicts.

Differences from bilm-tf, all deliberate:

* Tokens come from the run's tokenizer through a plain embedding table instead of the character
  CNN + highway layers (bilm-tf's own word-input option), so the model shares the toolkit's
  vocabulary and its input and output ids.
* Full softmax over the (small, subword) vocabulary instead of sampled softmax: the training
  loss is then a true cross-entropy, comparable with the Transformer objectives.
* No cell/projection clipping (`nn.LSTM` has none); gradient clipping of the shared trainer
  plays that role.
* Every sequence starts from a zero state (no state carried across batches), so no warm-up is
  needed at inference time.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from ptmkit.model.scalar_mix import ScalarMix
from ptmkit.model.vocab_loss import linear_cross_entropy

# Projected LSTMs run on PyTorch's native kernel instead of oneDNN's; the warning says only that.
warnings.filterwarnings("ignore", message="LSTM with projections is not supported with oneDNN")


def reverse_valid(x: Tensor, lengths: Tensor) -> Tensor:
    """Reverse the first `lengths[b]` positions of each row of `x` (B, L, ...), leaving the right
    padding in place, so the backward LSTM starts at each row's last real token. Involution."""
    positions = torch.arange(x.shape[1], device=x.device).expand(x.shape[0], -1)
    lengths = lengths[:, None]
    index = torch.where(positions < lengths, lengths - 1 - positions, positions)
    return x.gather(1, index.view(*index.shape, *([1] * (x.dim() - 2))).expand_as(x))


class DirectionalStack(nn.Module):
    """One direction of the biLM: projected LSTM layers with dropout on each layer's input and a
    residual connection from the second layer on (bilm-tf: DropoutWrapper(input_keep_prob) around
    ResidualWrapper; "don't add skip connection from token embedding to 1st layer output")."""

    def __init__(self, dim: int, cells: int, layers: int, dropout: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.LSTM(dim, cells, proj_size=dim, batch_first=True)
                                    for _ in range(layers))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> list[Tensor]:
        """Every layer's output (B, L, dim), bottom to top."""
        outputs = []
        for index, lstm in enumerate(self.layers):
            x = self.dropout(x)
            out, _ = lstm(x)
            x = out + x if index > 0 else out
            outputs.append(x)
        return outputs


class BiLM(nn.Module):
    """Shared embedding -> forward and backward `DirectionalStack`s -> shared softmax."""

    def __init__(self, vocab_size: int, dim: int, cells: int, layers: int, dropout: float,
                 pad_id: int = 0) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=pad_id)
        self.forward_stack = DirectionalStack(dim, cells, layers, dropout)
        self.backward_stack = DirectionalStack(dim, cells, layers, dropout)
        self.output_dropout = nn.Dropout(dropout)
        self.softmax = nn.Linear(dim, vocab_size)
        # bilm-tf: softmax W ~ N(0, 1/sqrt(dim)), b = 0, so a fresh model predicts ~uniformly.
        nn.init.normal_(self.softmax.weight, std=dim ** -0.5)
        nn.init.zeros_(self.softmax.bias)

    def layers(self, input_ids: Tensor, valid: Tensor | None = None) -> list[tuple[Tensor, Tensor]]:
        """(forward, backward) states of every layer, layer 0 being the token embedding itself.

        `valid` (B, L) marks real tokens; padding must be on the right. Forward position k has
        read tokens 0..k, backward position k has read tokens k..end.
        """
        lengths = (valid.sum(1) if valid is not None
                   else torch.full(input_ids.shape[:1], input_ids.shape[1], device=input_ids.device))
        x = self.embed(input_ids)
        forward = self.forward_stack(x)
        backward = [reverse_valid(h, lengths) for h in self.backward_stack(reverse_valid(x, lengths))]
        return [(x, x)] + list(zip(forward, backward))

    def directions(self, input_ids: Tensor) -> tuple[Tensor, Tensor]:
        """Top-layer forward and backward states, with bilm-tf's output dropout, for the loss."""
        forward, backward = self.layers(input_ids)[-1]
        return self.output_dropout(forward), self.output_dropout(backward)

    def logits(self, hidden: Tensor) -> Tensor:
        """The softmax shared by both directions, for the given rows only."""
        return self.softmax(hidden)

    def token_loss(self, hidden: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """(mean cross-entropy, accuracy) of the shared softmax at rows `hidden`, fused."""
        return linear_cross_entropy(hidden, self.softmax.weight, self.softmax.bias, targets)

    def flops_per_token(self, seq_len: int, predicted_fraction: float = 1.0) -> float:
        """Training FLOPs per input token (3x forward): both directions' LSTM gates and
        projections, and both directions' full softmax (`seq_len` does not matter for an RNN)."""
        dim, vocab = self.embed.embedding_dim, self.embed.num_embeddings
        lstm = self.forward_stack.layers[0]
        cells = lstm.hidden_size
        per_layer = 4 * cells * (dim + dim) + cells * dim
        macs = 2 * (len(self.forward_stack.layers) * per_layer + predicted_fraction * vocab * dim)
        return 3 * 2 * macs


class ELMoFeatures(nn.Module):
    """A frozen biLM plus a task-specific `ScalarMix` of its layers (Peters et al. 2018, §3.3):
    the downstream network of an ELMo run. Only the mix (and the task head) learn."""

    def __init__(self, bilm: BiLM, n_layers: int) -> None:
        super().__init__()
        self.bilm = bilm.requires_grad_(False)
        self.mix = ScalarMix(n_layers)
        self.output_size = 2 * bilm.embed.embedding_dim
