"""Layer-wise learning-rate decay for fine-tuning (Howard & Ruder 2018; ELECTRA, Clark et al.
2020): the head learns at the full rate, each backbone layer at `decay` times the rate of the
layer above, the embeddings lowest. Lower layers hold the general features pre-training paid
for; with few labels, updating them as fast as the fresh head mostly adds noise."""

from __future__ import annotations

import re

from torch import nn

_LAYER = re.compile(r"\blayers\.(\d+)\.")
_EMBEDDINGS = re.compile(r"(^|[._])embed\.|embedding")


def layer_depth(name: str, n_encoder_layers: int, n_layers: int) -> int:
    """0 for embeddings (a decoder's too), i + 1 for encoder layer i, then the decoder's layers
    above the encoder's (a decoder reads the encoder's top), n_layers + 1 for everything above."""
    match = _LAYER.search(name)
    if match:
        return int(match.group(1)) + 1 + (n_encoder_layers if _in_decoder(name) else 0)
    return 0 if _EMBEDDINGS.search(name) else n_layers + 1


def _in_decoder(name: str) -> bool:
    return ".decoder." in f".{name}"


def layerwise_scales(model: nn.Module, decay: float) -> dict[str, float]:
    """Learning-rate factor of every parameter of a `TaskModel` (empty when decay is 1)."""
    if decay == 1.0:
        return {}
    names = [name for name, _ in model.named_parameters()]
    layers = [(int(m.group(1)), _in_decoder(n)) for n in names if (m := _LAYER.search(n))]
    n_encoder = 1 + max((i for i, decoder in layers if not decoder), default=-1)
    n_layers = n_encoder + 1 + max((i for i, decoder in layers if decoder), default=-1)
    return {name: decay ** (n_layers + 1 - layer_depth(name, n_encoder, n_layers)) if name.startswith("backbone.")
            else 1.0 for name in names}
